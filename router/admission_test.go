package router

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
)

func newAdmissionRouter(t *testing.T) *Router {
	t.Helper()
	r, err := New([]Backend{nil}, Options{TxnInflightMax: 10, TxnQueuedMax: 15, TxnAdmitWaitMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.cancel)
	return r
}

// reserveAsync asks for n slots in the background and reports the outcome.
func reserveAsync(r *Router, ctx context.Context, n int) <-chan error {
	done := make(chan error, 1)
	go func() { done <- r.reserveTxns(ctx, n) }()
	return done
}

// waitQueued waits until n transactions wait for slots (the waiter is parked).
func waitQueued(t *testing.T, r *Router, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.txnsQueued.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("queued %d, want %d", r.txnsQueued.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestReserveTxnsWaitsForRoom(t *testing.T) {
	r := newAdmissionRouter(t)
	ctx := context.Background()
	if err := r.reserveTxns(ctx, 6); err != nil {
		t.Fatal(err)
	}
	// 4 left: a request of 5 waits instead of being refused, and gets in on a release.
	r.opts.TxnAdmitWaitMax = time.Minute
	done := reserveAsync(r, ctx, 5)
	waitQueued(t, r, 5)
	r.releaseTxns(6)
	if err := <-done; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if q := r.txnsQueued.Load(); q != 0 {
		t.Fatalf("queued %d after admission", q)
	}
	r.releaseTxns(5)
	if !r.txns.TryAcquire(10) {
		t.Fatal("slots leaked")
	}
}

func TestReserveTxnsRefusals(t *testing.T) {
	code := func(err error) connect.Code { return connect.CodeOf(err) }
	t.Run("more than the limit in one request", func(t *testing.T) {
		r := newAdmissionRouter(t)
		if err := r.reserveTxns(context.Background(), 11); code(err) != connect.CodeResourceExhausted {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("waited too long", func(t *testing.T) {
		r := newAdmissionRouter(t)
		if err := r.reserveTxns(context.Background(), 10); err != nil {
			t.Fatal(err)
		}
		if err := r.reserveTxns(context.Background(), 1); code(err) != connect.CodeResourceExhausted {
			t.Fatalf("got %v", err)
		}
		if q := r.txnsQueued.Load(); q != 0 {
			t.Fatalf("queued %d after the refusal", q)
		}
	})
	t.Run("too many waiting", func(t *testing.T) {
		r := newAdmissionRouter(t)
		r.opts.TxnAdmitWaitMax = time.Minute
		if err := r.reserveTxns(context.Background(), 10); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		first := reserveAsync(r, ctx, 10)
		waitQueued(t, r, 10)
		if err := r.reserveTxns(context.Background(), 6); code(err) != connect.CodeResourceExhausted {
			t.Fatalf("over the queue limit: got %v", err)
		}
		// The request's context ends while it waits: its own code, nothing taken.
		cancel()
		if err := <-first; code(err) != connect.CodeCanceled {
			t.Fatalf("canceled waiter: got %v", err)
		}
		waitQueued(t, r, 0)
		r.releaseTxns(10)
		if !r.txns.TryAcquire(10) {
			t.Fatal("slots leaked")
		}
	})
}

package router

import (
	"context"
	"sync"
	"testing"
	"time"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/shardledger/shardledger/ledger/ondisk"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// recordingBackend applies nothing: it records how many commands each proposed entry
// carried and answers each with an empty result.
type recordingBackend struct {
	mu      sync.Mutex
	entries []int
	gate    chan struct{} // when set, a proposal waits for it
}

func (b *recordingBackend) ID() uint64 { return 1 }

func (b *recordingBackend) Leader(uint64) (uint64, uint64, bool) { return 1, 1, true }

func (b *recordingBackend) Read(context.Context, uint64, interface{}, bool) (interface{}, error) {
	return nil, nil
}

func (b *recordingBackend) Propose(ctx context.Context, _ uint64, data []byte) (sm.Result, error) {
	var batch raftv1.Batch
	if err := proto.Unmarshal(data, &batch); err != nil {
		return sm.Result{}, err
	}
	if b.gate != nil {
		<-b.gate
	}
	b.mu.Lock()
	b.entries = append(b.entries, len(batch.Commands))
	b.mu.Unlock()
	out, err := proto.Marshal(&raftv1.BatchResult{Results: make([]*raftv1.CommandResult, len(batch.Commands))})
	return sm.Result{Value: ondisk.ResultApplied, Data: out}, err
}

func (b *recordingBackend) proposed() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]int(nil), b.entries...)
}

func newQueueRouter(t *testing.T, be *recordingBackend, linger time.Duration) *Router {
	t.Helper()
	r, err := New([]Backend{be}, Options{BackgroundLinger: linger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.cancel)
	return r
}

func forget(id string) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_ForgetTxn{ForgetTxn: &raftv1.ForgetTxn{TxnId: id}}}
}

// submitAsync submits cmd in the background and reports its error.
func submitAsync(r *Router, ctx context.Context, cmd *raftv1.Command) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := r.submit(ctx, 7, cmd, 1)
		done <- err
	}()
	return done
}

// enqueue puts cmd in shard 7's queue (background or not) before it returns, as submit
// does, and returns where its outcome will come.
func enqueue(t *testing.T, r *Router, background bool, cmd *raftv1.Command) chan outcome {
	t.Helper()
	p := &pending{cmd: cmd, size: 1, done: make(chan outcome, 1)}
	q := r.queue(7)
	ch := q.ch
	if background {
		ch = q.bg
	}
	select {
	case ch <- p:
	default:
		t.Fatal("queue full")
	}
	return p.done
}

// waitTaken waits until the queue's loop has taken every command from its channels.
func waitTaken(t *testing.T, r *Router) {
	t.Helper()
	q := r.queue(7)
	deadline := time.Now().Add(10 * time.Second)
	for len(q.bg)+len(q.ch) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("commands not taken")
		}
		time.Sleep(time.Millisecond)
	}
}

// A background command waits for a client's command and rides in its entry.
func TestBackgroundRidesWithForeground(t *testing.T) {
	be := &recordingBackend{}
	r := newQueueRouter(t, be, time.Hour)
	bg := enqueue(t, r, true, forget("bg"))
	waitTaken(t, r) // held from now on
	if _, err := r.submit(context.Background(), 7, forget("fg"), 1); err != nil {
		t.Fatal(err)
	}
	if o := <-bg; o.err != nil {
		t.Fatal(o.err)
	}
	if got := be.proposed(); len(got) != 1 || got[0] != 2 {
		t.Fatalf("entries %v, want one carrying both commands", got)
	}
}

// Alone, a background command is proposed once the linger passes.
func TestBackgroundAloneAfterLinger(t *testing.T) {
	be := &recordingBackend{}
	r := newQueueRouter(t, be, 20*time.Millisecond)
	if _, err := r.submit(withBackground(context.Background()), 7, forget("bg"), 1); err != nil {
		t.Fatal(err)
	}
	if got := be.proposed(); len(got) != 1 || got[0] != 1 {
		t.Fatalf("entries %v, want one carrying the command", got)
	}
}

// With no linger, background commands are proposed like clients' ones; commands waiting
// while every slot is busy go in one entry.
func TestNoLingerCoalescesWhileBusy(t *testing.T) {
	be := &recordingBackend{gate: make(chan struct{})}
	r := newQueueRouter(t, be, -1)
	var dones []chan outcome
	q := r.queue(7)
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < r.opts.InflightPerShard; i++ { // fill the slots, one entry each
		dones = append(dones, enqueue(t, r, false, forget("busy")))
		for len(q.sem) < i+1 {
			if time.Now().After(deadline) {
				t.Fatal("slot not taken")
			}
			time.Sleep(time.Millisecond)
		}
	}
	dones = append(dones, enqueue(t, r, true, forget("b1")), enqueue(t, r, false, forget("f1")))
	close(be.gate)
	for _, d := range dones {
		if o := <-d; o.err != nil {
			t.Fatal(o.err)
		}
	}
	got := be.proposed() // in any order: the entries waited on the same gate
	twos := 0
	for _, n := range got {
		if n == 2 {
			twos++
		}
	}
	if len(got) != r.opts.InflightPerShard+1 || twos != 1 {
		t.Fatalf("entries %v: want the 2 commands that waited for a slot in one entry", got)
	}
}

// With no linger, a background command left over from a full entry goes at once, with
// no other command to trigger it.
func TestNoLingerLeftoverGoes(t *testing.T) {
	be := &recordingBackend{}
	r, err := New([]Backend{be}, Options{BackgroundLinger: -1, BatchItemsMax: 2, InflightPerShard: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.cancel)
	q := r.queue(7)
	q.sem <- struct{}{} // the only slot is busy: what comes now waits
	one := enqueue(t, r, true, forget("b1"))
	waitTaken(t, r)
	p := &pending{cmd: forget("b2"), size: 2, done: make(chan outcome, 1)}
	q.bg <- p // does not fit beside b1: left over, held
	<-q.sem
	for _, d := range []chan outcome{one, p.done} {
		select {
		case o := <-d:
			if o.err != nil {
				t.Fatal(o.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("a background command was never proposed (entries %v)", be.proposed())
		}
	}
	if got := be.proposed(); len(got) != 2 {
		t.Fatalf("entries %v, want b1 and b2 apart", got)
	}
}

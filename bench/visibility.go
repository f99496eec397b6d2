package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/HdrHistogram/hdrhistogram-go"

	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Limits of a visibility measurement.
const (
	VisibilityTransfersMax = 100_000
	visibilityPoll         = 200 * time.Microsecond
	visibilityWaitMax      = 30 * time.Second
)

// VisibilityResult says how long after its answer a transfer shows as posted on both
// of its accounts (GetAccounts: debits_posted and credits_posted moved, nothing
// pending): for a cross-shard transfer, the work after the answer (committing the
// branches) decides it.
type VisibilityResult struct {
	Transfers int     `json:"transfers"`
	Cross     bool    `json:"cross_shard"`
	Answer    Latency `json:"answer_ms"`
	Posted    Latency `json:"answer_to_posted_ms"`
}

// Markdown renders the result as a table.
func (v *VisibilityResult) Markdown() string {
	var b strings.Builder
	kind := "intra-shard"
	if v.Cross {
		kind = "cross-shard"
	}
	fmt.Fprintf(&b, "%d %s transfers, one at a time, each on a fresh pair of accounts\n\n", v.Transfers, kind)
	b.WriteString("| | p50 | p90 | p99 | max (ms) |\n|---|--:|--:|--:|--:|\n")
	for _, r := range []struct {
		name string
		l    Latency
	}{{"request → answer", v.Answer}, {"answer → posted on both accounts", v.Posted}} {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.name, formatMs(r.l.P50), formatMs(r.l.P90), formatMs(r.l.P99), formatMs(r.l.Max))
	}
	return b.String()
}

// Visibility sends n transfers one at a time, each between two fresh accounts (on two
// shards when cross, else on one), and after each answer polls the two accounts until
// both show it posted. One client, no other load: it measures the path, not a queue.
func (l *Ledger) Visibility(ctx context.Context, n int, cross bool) (*VisibilityResult, error) {
	if n < 1 || n > VisibilityTransfersMax {
		return nil, fmt.Errorf("visibility: 1-%d transfers, got %d", VisibilityTransfersMax, n)
	}
	if cross && len(l.shards()) < 2 {
		return nil, fmt.Errorf("visibility: cross-shard needs 2 shards, the cluster has %d", len(l.shards()))
	}
	newHist := func() *hdrhistogram.Histogram {
		return hdrhistogram.New(1, int64(visibilityWaitMax/time.Microsecond), 3)
	}
	answer, posted := newHist(), newHist()
	run := time.Now().UnixNano()
	next := 0
	// pair returns two unused account ids on two shards (cross) or one.
	pair := func() (string, string) {
		var a string
		for {
			id := fmt.Sprintf("vis-%d-%d", run, next)
			next++
			switch {
			case a == "":
				a = id
			case (l.ShardOf(a) != l.ShardOf(id)) == cross:
				return a, id
			}
		}
	}
	for i := range n {
		a, b := pair()
		if err := l.createPair(ctx, a, b); err != nil {
			return nil, err
		}
		t := &ledgerv1.Transfer{Id: fmt.Sprintf("vis-%d-t%d", run, i), DebitAccountId: a, CreditAccountId: b, Amount: 1, Currency: "USD"}
		start := time.Now()
		res, err := l.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{t}}))
		if err != nil {
			return nil, fmt.Errorf("visibility: transfer %d: %w", i, err)
		}
		if st := res.Msg.Results[0].Status; st != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
			return nil, fmt.Errorf("visibility: transfer %d: %s", i, st)
		}
		answered := time.Now()
		if err := l.waitPosted(ctx, a, b); err != nil {
			return nil, fmt.Errorf("visibility: transfer %d: %w", i, err)
		}
		_ = answer.RecordValue(max(answered.Sub(start).Microseconds(), 1))
		_ = posted.RecordValue(min(max(time.Since(answered).Microseconds(), 1), posted.HighestTrackableValue()))
	}
	return &VisibilityResult{Transfers: n, Cross: cross, Answer: summary(answer), Posted: summary(posted)}, nil
}

func summary(h *hdrhistogram.Histogram) Latency {
	ms := func(q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }
	return Latency{P50: ms(50), P90: ms(90), P99: ms(99), P999: ms(99.9), Max: float64(h.Max()) / 1000}
}

// shards lists the shards of the cluster's map.
func (l *Ledger) shards() map[uint64]bool {
	out := map[uint64]bool{}
	for _, s := range l.slotShard {
		out[s] = true
	}
	return out
}

func (l *Ledger) createPair(ctx context.Context, a, b string) error {
	res, err := l.client.CreateAccounts(ctx, connect.NewRequest(&ledgerv1.CreateAccountsRequest{Accounts: []*ledgerv1.Account{
		{Id: a, Currency: "USD"}, {Id: b, Currency: "USD"}}}))
	if err != nil {
		return fmt.Errorf("visibility: create accounts: %w", err)
	}
	for _, r := range res.Msg.Results {
		if r.Status != ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED {
			return fmt.Errorf("visibility: create account %s: %s", r.Id, r.Status)
		}
	}
	return nil
}

// waitPosted polls a (debit) and b (credit) until both show one unit posted and
// nothing pending.
func (l *Ledger) waitPosted(ctx context.Context, a, b string) error {
	deadline := time.Now().Add(visibilityWaitMax)
	for {
		res, err := l.client.GetAccounts(ctx, connect.NewRequest(&ledgerv1.GetAccountsRequest{Ids: []string{a, b}}))
		if err != nil {
			return fmt.Errorf("get accounts: %w", err)
		}
		if accs := res.Msg.Accounts; len(accs) == 2 {
			byID := map[string]*ledgerv1.Account{accs[0].Id: accs[0], accs[1].Id: accs[1]}
			da, cb := byID[a], byID[b]
			if da != nil && cb != nil && da.DebitsPosted == 1 && da.DebitsPending == 0 && cb.CreditsPosted == 1 && cb.CreditsPending == 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not posted on %s and %s after %v", a, b, visibilityWaitMax)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(visibilityPoll):
		}
	}
}

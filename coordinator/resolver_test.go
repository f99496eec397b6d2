package coordinator

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// fakeCluster answers the resolver from a fixed record and records what it is asked.
type fakeCluster struct {
	mu        sync.Mutex
	rec       *raftv1.TxnRecord // what a query finds (nil: unknown)
	decided   *raftv1.TxnRecord // what a proposed decision answers (the decision that stands)
	proposals []*raftv1.DecideTxn
	prepared  int
	commits   []string // "txn/index/account"
	aborts    []string
}

func (f *fakeCluster) Propose(_ context.Context, _ uint64, cmd *raftv1.Command) (*raftv1.CommandResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.proposals = append(f.proposals, cmd.GetDecideTxn())
	return &raftv1.CommandResult{Txn: f.decided}, nil
}

// PrepareBranches answers every branch as prepared (recovery of an undecided txn).
func (f *fakeCluster) PrepareBranches(_ context.Context, bs []*raftv1.Branch) ([]*raftv1.Vote, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prepared += len(bs)
	var vs []*raftv1.Vote
	for _, b := range bs {
		vs = append(vs, &raftv1.Vote{TxnId: b.TxnId, Index: b.Index, State: raftv1.BranchState_BRANCH_STATE_PREPARED})
	}
	return vs, nil
}

func (f *fakeCluster) ResolveBranches(_ context.Context, refs []*raftv1.BranchRef, commit bool) ([]*raftv1.Vote, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range refs {
		s := fmt.Sprintf("%s/%d/%s", r.TxnId, r.Index, r.AccountId)
		if commit {
			f.commits = append(f.commits, s)
		} else {
			f.aborts = append(f.aborts, s)
		}
	}
	return nil, nil
}

func (f *fakeCluster) Query(context.Context, uint64, *raftv1.Query, bool) (*raftv1.QueryResult, error) {
	out := &raftv1.QueryResult{}
	if f.rec != nil {
		out.Txns = []*raftv1.TxnRecord{f.rec}
	}
	return out, nil
}

func TestResolverInquiry(t *testing.T) {
	branches := []*raftv1.Branch{
		{TxnId: "T", Index: 0, AccountId: "A", Debit: true, Amount: 5},
		{TxnId: "T", Index: 1, AccountId: "B", Amount: 5},
	}
	record := func(d raftv1.TxnDecision) *raftv1.TxnRecord {
		return &raftv1.TxnRecord{TxnId: "T", Decision: d, Branches: branches,
			Transfers: []*ledgerv1.Transfer{{Id: "T", DebitAccountId: "A", CreditAccountId: "B", Amount: 5, Currency: "USD"}}}
	}
	// owned sets a record's router deadline this far from now.
	owned := func(rec *raftv1.TxnRecord, in time.Duration) *raftv1.TxnRecord {
		rec.RouterDeadlineUnixNano = time.Now().Add(in).UnixNano()
		return rec
	}
	tombstone := &raftv1.TxnRecord{TxnId: "T", Decision: decAbort, Forgotten: true}
	// The inquiring shard holds T/0 on A (the record's) and T/0 on C: a branch a reuse of
	// the id with other accounts prepared, which the record does not own.
	mine := []*raftv1.Branch{branches[0], {TxnId: "T", Index: 0, AccountId: "C", Debit: true, Amount: 9}}
	cases := []struct {
		name            string
		rec, decided    *raftv1.TxnRecord
		proposes        raftv1.TxnDecision // the decision proposed, if any
		commits, aborts []string
	}{
		{"committed: its branch commits, the stray one aborts", record(decCommit), nil, decNone,
			[]string{"T/0/A"}, []string{"T/0/C"}},
		{"aborted: both abort", record(decAbort), nil, decNone, nil, []string{"T/0/A", "T/0/C"}},
		{"held: its branch keeps the reservation, the stray one aborts", record(decHold), nil, decNone,
			nil, []string{"T/0/C"}},
		{"unknown: an abort tombstone is logged, both abort", nil, tombstone, decAbort, nil, []string{"T/0/A", "T/0/C"}},
		{"begun, undecided, every branch prepared: recovery commits", record(decNone), record(decCommit), decCommit,
			[]string{"T/0/A"}, []string{"T/0/C"}},
		{"begun, undecided, its router's deadline passed: recovery commits", owned(record(decNone), -time.Second), record(decCommit), decCommit,
			[]string{"T/0/A"}, []string{"T/0/C"}},
		{"begun, undecided, before its router's deadline: left to the router, asked again next scan", owned(record(decNone), time.Hour), nil, decNone,
			nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeCluster{rec: tc.rec, decided: tc.decided}
			r := NewResolver(func() []uint64 { return nil }, func(string) uint64 { return 1 }, f, ResolverOptions{})
			r.inquire(context.Background(), "T", mine)
			switch {
			case tc.proposes == decNone && len(f.proposals) > 0:
				t.Fatalf("proposed %v", f.proposals)
			case tc.proposes != decNone && (len(f.proposals) != 1 || f.proposals[0].GetDecision() != tc.proposes):
				t.Fatalf("proposed %v, want one %v", f.proposals, tc.proposes)
			}
			for _, p := range f.proposals {
				if len(p.GetTransfers()) != 0 || p.GetTxnId() != "T" {
					t.Errorf("inquiry proposed %v", p)
				}
			}
			if tc.proposes == decCommit && f.prepared != len(branches) {
				t.Errorf("recovery prepared %d branches, want the record's %d", f.prepared, len(branches))
			}
			if tc.proposes == decNone && f.prepared != 0 {
				t.Errorf("prepared %d branches without recovering", f.prepared)
			}
			if !slices.Equal(f.commits, tc.commits) || !slices.Equal(f.aborts, tc.aborts) {
				t.Fatalf("commits %v aborts %v, want %v %v", f.commits, f.aborts, tc.commits, tc.aborts)
			}
		})
	}
}

package router

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/shardledger/shardledger/coordinator"
	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// The router is the coordinator's view of the cluster: proposals to any group, and
// branch commands routed by account to the owning shards (batched with client work).
var _ coordinator.Cluster = (*Router)(nil)

// Propose runs one command on a group with retries (commands are idempotent).
func (r *Router) Propose(ctx context.Context, group uint64, cmd *raftv1.Command) (*raftv1.CommandResult, error) {
	return r.exec(ctx, group, cmd, commandSize(cmd))
}

// Query reads a group.
func (r *Router) Query(ctx context.Context, group uint64, q *raftv1.Query, stale bool) (*raftv1.QueryResult, error) {
	res, err := r.read(ctx, group, q, stale)
	if err != nil {
		return nil, err
	}
	out, ok := res.(*raftv1.QueryResult)
	if !ok {
		return nil, fmt.Errorf("group %d answered %T", group, res)
	}
	return out, nil
}

func branchUnits(accounts []string) []unit {
	units := make([]unit, len(accounts))
	for i, a := range accounts {
		units[i] = unit{items: []int{i}, ids: []string{a}}
	}
	return units
}

// PrepareBranches prepares branches on the shards owning their accounts.
func (r *Router) PrepareBranches(ctx context.Context, branches []*raftv1.Branch) ([]*raftv1.Vote, error) {
	accounts := make([]string, len(branches))
	for i, b := range branches {
		accounts[i] = b.GetAccountId()
	}
	return r.branchCommand(ctx, accounts, func(us []int) *raftv1.Command {
		p := &raftv1.PrepareBranches{Branches: make([]*raftv1.Branch, len(us))}
		for i, u := range us {
			p.Branches[i] = branches[u]
		}
		return &raftv1.Command{Op: &raftv1.Command_Prepare{Prepare: p}}
	})
}

// ResolveBranches commits or aborts branches on the shards owning their accounts.
func (r *Router) ResolveBranches(ctx context.Context, refs []*raftv1.BranchRef, commit bool) ([]*raftv1.Vote, error) {
	accounts := make([]string, len(refs))
	for i, b := range refs {
		accounts[i] = b.GetAccountId()
	}
	return r.branchCommand(ctx, accounts, func(us []int) *raftv1.Command {
		p := &raftv1.ResolveBranches{Commit: commit, Branches: make([]*raftv1.BranchRef, len(us))}
		for i, u := range us {
			p.Branches[i] = refs[u]
		}
		return &raftv1.Command{Op: &raftv1.Command_Resolve{Resolve: p}}
	})
}

// branchCommand runs, on each shard owning some of the accounts, the command build makes
// for the branches (by index) it owns, and returns the votes in branch order.
func (r *Router) branchCommand(ctx context.Context, accounts []string, build func(us []int) *raftv1.Command) ([]*raftv1.Vote, error) {
	votes := make([]*raftv1.Vote, len(accounts))
	var mu sync.Mutex
	err := r.run(ctx, branchUnits(accounts), func(us []int) (*raftv1.Command, int) {
		return build(us), len(us)
	}, func(us []int, res *raftv1.CommandResult) {
		mu.Lock()
		defer mu.Unlock()
		for i, u := range us {
			if i < len(res.Votes) {
				votes[u] = res.Votes[i]
			}
		}
	})
	return votes, checkVotes(votes, err)
}

func checkVotes(votes []*raftv1.Vote, err error) error {
	if err != nil {
		return err
	}
	for i, v := range votes {
		if v == nil {
			return fmt.Errorf("no vote for branch %d", i)
		}
	}
	return nil
}

// CoordinatorGroupOf returns the coordinator group of a transaction id.
func (r *Router) CoordinatorGroupOf(txnID string) uint64 {
	m := r.shardMap.Load()
	if m == nil {
		return 0
	}
	return coordinator.GroupOf(txnID, m.CoordinatorGroups)
}

// isCross tells whether a unit's accounts live on more than one shard.
func isCross(m *raftv1.ShardMap, u unit) bool {
	shard := uint64(0)
	for _, id := range u.ids {
		if id == "" {
			continue
		}
		s := m.SlotShard[ledger.SlotOf(id, m.SlotCount)]
		if shard != 0 && s != shard {
			return true
		}
		shard = s
	}
	return false
}

// checkCrossUnit refuses, before anything is applied, the cross-shard shapes the
// coordinator does not take: pending transfers, posts and voids inside linked chains.
func checkCrossUnit(ts []*ledgerv1.Transfer, u unit) error {
	if len(u.items) == 1 {
		return nil
	}
	seen := make(map[string]bool, len(u.items))
	for _, i := range u.items {
		t := ts[i]
		if seen[t.GetId()] {
			return invalid(fmt.Sprintf("transfers[%d].id", i), fmt.Errorf("%q appears twice in one linked chain spanning shards", t.GetId()))
		}
		seen[t.GetId()] = true
		if t.GetPending() || t.GetPostPendingId() != "" || t.GetVoidPendingId() != "" {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
				"transfer %d: a linked chain spanning shards cannot hold pending transfers, posts or voids (nothing was applied)", i))
		}
	}
	return nil
}

// reserveTxns takes n of the router's cross-shard transaction slots, all or none, so a
// request is refused whole (nothing applied) when they are not there.
func (r *Router) reserveTxns(n int) error {
	if got := r.txns.Add(int64(n)); got > int64(r.opts.TxnInflightMax) {
		r.txns.Add(-int64(n))
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
			"%d cross-shard transactions in flight, %d more asked (limit %d); nothing was applied, retry later",
			got-int64(n), n, r.opts.TxnInflightMax))
	}
	return nil
}

func (r *Router) releaseTxns(n int) { r.txns.Add(-int64(n)) }

// runTxn runs a cross-shard chain (or one transfer, or a post/void of a cross-shard
// pending transfer) through its coordinator and answers once the decision is applied.
func (r *Router) runTxn(ctx context.Context, m *raftv1.ShardMap, chain []*ledgerv1.Transfer) ([]*ledgerv1.TransferResult, error) {
	if len(m.CoordinatorGroups) == 0 {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the cluster has no coordinator group"))
	}

	first := chain[0]
	if p := pendingRef(first); p != "" {
		group := coordinator.GroupOf(p, m.CoordinatorGroups)
		res, err := r.exec(ctx, group, &raftv1.Command{Op: &raftv1.Command_ResolvePending{ResolvePending: &raftv1.ResolvePending{Transfer: first}}}, 1)
		if err != nil {
			return nil, err
		}
		if res.Refusal != raftv1.Refusal_REFUSAL_UNSPECIFIED || len(res.Transfers) != 1 {
			return nil, fmt.Errorf("coordinator refused the post/void: %s", res.Message)
		}
		return res.Transfers, nil
	}
	group := coordinator.GroupOf(first.GetId(), m.CoordinatorGroups)
	// Register for the decision before proposing, so the wake-up cannot be missed.
	var wake <-chan *raftv1.TxnRecord
	if _, b := r.backend(group); b != nil {
		if w, ok := b.(DecisionWaiter); ok {
			ch, cancel := w.WaitDecision(first.GetId())
			defer cancel()
			wake = ch
		}
	}
	begin := &raftv1.BeginTxn{TxnId: first.GetId(), Transfers: chain}
	res, err := r.exec(ctx, group, &raftv1.Command{Op: &raftv1.Command_BeginTxn{BeginTxn: begin}}, len(chain))
	if err != nil {
		return nil, err
	}
	if len(res.Transfers) > 0 {
		return res.Transfers, nil // ID_REUSED
	}
	if res.Refusal != raftv1.Refusal_REFUSAL_UNSPECIFIED || res.Txn == nil {
		return nil, fmt.Errorf("coordinator refused the transaction: %s", res.Message)
	}
	rec, err := r.waitDecided(ctx, group, res.Txn, wake)
	if err != nil {
		return nil, err
	}
	if h := r.opts.AfterDecision; h != nil {
		if err := h(rec.TxnId); err != nil {
			return nil, err
		}
	}
	return coordinator.Outcome(rec, res.Existed), nil
}

// waitDecided waits until the transaction's decision is applied: woken by the local
// replica's apply hook when the backend offers one, and polling (stale reads: a decision
// seen on any replica is committed) in any case, in case the decision was applied
// elsewhere first.
func (r *Router) waitDecided(ctx context.Context, group uint64, rec *raftv1.TxnRecord, wake <-chan *raftv1.TxnRecord) (*raftv1.TxnRecord, error) {
	q := &raftv1.Query{Op: &raftv1.Query_Txns{Txns: &raftv1.IdList{Ids: []string{rec.TxnId}}}}
	poll := r.opts.DecisionPollMax
	if wake == nil {
		poll = min(poll, 2*time.Millisecond)
	}
	for attempt := 0; !coordinator.Decided(rec); attempt++ {
		t := time.NewTimer(min(time.Millisecond<<min(attempt, 6), poll))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("waiting for the decision of %q: %w", rec.TxnId, ctx.Err())
		case d := <-wake:
			t.Stop()
			if d != nil && d.TxnId == rec.TxnId {
				rec = d
				continue
			}
		case <-t.C:
		}
		res, err := r.Query(ctx, group, q, true)
		if err != nil {
			continue
		}
		if len(res.Txns) == 1 {
			rec = res.Txns[0]
		}
	}
	return rec, nil
}

// commandSize is the number of items a command carries (what BatchItemsMax counts).
func commandSize(cmd *raftv1.Command) int {
	n := 1
	switch op := cmd.GetOp().(type) {
	case *raftv1.Command_BeginTxn:
		n = len(op.BeginTxn.GetTransfers())
	case *raftv1.Command_CreateTransfers:
		n = len(op.CreateTransfers.GetTransfers())
	case *raftv1.Command_CreateAccounts:
		n = len(op.CreateAccounts.GetAccounts())
	case *raftv1.Command_Prepare:
		n = len(op.Prepare.GetBranches())
	case *raftv1.Command_Resolve:
		n = len(op.Resolve.GetBranches())
	}
	return max(n, 1)
}

package router

import (
	"time"

	"context"
	"errors"
	"fmt"
	"sync"

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
// request is refused whole (nothing applied) when it cannot have them. It waits for them
// behind the requests that came first, at most TxnAdmitWaitMax and while ctx lasts.
func (r *Router) reserveTxns(ctx context.Context, n int) error {
	if n > r.opts.TxnInflightMax {
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
			"%d cross-shard transactions in one request, more than this router takes at once (%d); nothing was applied",
			n, r.opts.TxnInflightMax))
	}
	if r.txns.TryAcquire(int64(n)) {
		return nil
	}
	if q := r.txnsQueued.Add(int64(n)); q > int64(r.opts.TxnQueuedMax) {
		r.txnsQueued.Add(-int64(n))
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
			"%d cross-shard transactions wait for room already, %d more asked (limit %d); nothing was applied, retry later",
			q-int64(n), n, r.opts.TxnQueuedMax))
	}
	defer r.txnsQueued.Add(-int64(n))
	wctx, cancel := context.WithTimeout(ctx, r.opts.TxnAdmitWaitMax)
	defer cancel()
	start := r.opts.Now()
	if err := r.txns.Acquire(wctx, int64(n)); err != nil {
		if ctx.Err() != nil {
			return toConnect(fmt.Errorf("waiting for room for %d cross-shard transactions (nothing was applied): %w", n, ctx.Err()))
		}
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
			"no room for %d cross-shard transactions after %v (limit %d in flight); nothing was applied, retry later",
			n, r.opts.Now().Sub(start).Round(time.Millisecond), r.opts.TxnInflightMax))
	}
	return nil
}

func (r *Router) releaseTxns(n int) { r.txns.Release(int64(n)) }

// runTxns runs a request's cross-shard chains (single transfers or linked chains; or
// posts/voids of cross-shard pending transfers) and answers each once its outcome is
// durable.
//
// Parallel commits: the router logs each transaction's Begin in its coordinator group
// and, at the same time, prepares every branch of every transaction (one command per
// shard for the whole request). A transaction begun with every branch prepared is
// committed: the router answers then, after one round. Nobody can log an abort for it
// any more: the coordinator takes an abort only with a vote showing a branch refused or
// aborted, and a prepared branch stays prepared until it is committed or aborted by
// the decision. So the router, in the background, commits the branches at once and
// then logs the decision and closes the record in one command (finishCommits). If the
// router dies first, the coordinator's driver (after DriverOptions.RecoverAfter and
// the router's deadline) or a participant's inquiry prepares every branch again and
// logs what their stored states call for (PREPARED or COMMITTED): the same commit.
//
// Two-phase (pending) transfers take two rounds: the prepares, then the HOLD decision
// with the transfers (presumed abort: no Begin), since a post must find it decided.
//
// It returns how many of the chains are being finished after the answer: the caller's
// transaction slots (reserveTxns) for those are released by finishCommits, once they
// are finished, so that work stays within TxnInflightMax too.
func (r *Router) runTxns(ctx context.Context, m *raftv1.ShardMap, chains [][]*ledgerv1.Transfer) ([][]*ledgerv1.TransferResult, []error, int) {
	out := make([][]*ledgerv1.TransferResult, len(chains))
	errs := make([]error, len(chains))
	if len(m.CoordinatorGroups) == 0 {
		for i := range errs {
			errs[i] = connect.NewError(connect.CodeFailedPrecondition, errors.New("the cluster has no coordinator group"))
		}
		return out, errs, 0
	}
	var wg sync.WaitGroup
	// Posts and voids of held transactions are decided by the coordinator alone.
	var txns []int
	for i, chain := range chains {
		if pendingRef(chain[0]) == "" {
			txns = append(txns, i)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = r.resolvePending(ctx, m, chain[0])
		}()
	}
	// Begin the transactions (not the pending ones) while their branches are prepared.
	// Until this request's deadline this router owns them: the coordinator's driver
	// recovers them only after it (a loaded router is slow, not dead).
	var deadline int64
	if dl, ok := ctx.Deadline(); ok {
		deadline = dl.UnixNano()
	}
	begun := make([]*raftv1.CommandResult, len(chains))
	beginErr := make([]error, len(chains))
	var begins sync.WaitGroup
	branches := make([][]*raftv1.Branch, len(chains))
	var all []*raftv1.Branch
	for _, i := range txns {
		txnID := chains[i][0].GetId()
		branches[i] = coordinator.Branches(txnID, chains[i])
		all = append(all, branches[i]...)
		if chains[i][0].GetPending() {
			continue
		}
		begins.Add(1)
		go func() {
			defer begins.Done()
			if h := r.opts.BeforeBegin; h != nil {
				if beginErr[i] = h(ctx, txnID); beginErr[i] != nil {
					return
				}
			}
			group := coordinator.GroupOf(txnID, m.CoordinatorGroups)
			begun[i], beginErr[i] = r.exec(ctx, group, &raftv1.Command{Op: &raftv1.Command_BeginTxn{
				BeginTxn: &raftv1.BeginTxn{TxnId: txnID, Transfers: chains[i], RouterDeadlineUnixNano: deadline}}}, len(chains[i]))
		}()
	}
	var votes []*raftv1.Vote
	if len(all) > 0 {
		votes, _ = r.PrepareBranches(ctx, all) // a missing vote decides nothing
	}
	if len(votes) != len(all) {
		votes = make([]*raftv1.Vote, len(all))
	}
	begins.Wait()
	k := 0
	finish := make([]*raftv1.DecideTxn, len(chains))
	for _, i := range txns {
		mine := votes[k : k+len(branches[i])]
		k += len(branches[i])
		wg.Add(1)
		go func() {
			defer wg.Done()
			if chains[i][0].GetPending() {
				out[i], errs[i] = r.decide(ctx, m, chains[i], branches[i], mine)
			} else {
				out[i], errs[i] = r.commitBegun(ctx, m, chains[i], branches[i], mine, begun[i], beginErr[i], &finish[i])
			}
		}()
	}
	wg.Wait()
	var done []finishing
	for i, dec := range finish {
		if dec != nil {
			done = append(done, finishing{group: coordinator.GroupOf(dec.TxnId, m.CoordinatorGroups), dec: dec, branches: branches[i]})
		}
	}
	r.finishCommits(done)
	return out, errs, len(done)
}

// commitBegun answers a transaction whose Begin and prepares have come back. A
// transaction it answers as committed with no decision logged yet is left in *finish
// (its commit decision) for finishCommits.
func (r *Router) commitBegun(ctx context.Context, m *raftv1.ShardMap, chain []*ledgerv1.Transfer, branches []*raftv1.Branch,
	votes []*raftv1.Vote, res *raftv1.CommandResult, beginErr error, finish **raftv1.DecideTxn) ([]*ledgerv1.TransferResult, error) {
	txnID := chain[0].GetId()
	group := coordinator.GroupOf(txnID, m.CoordinatorGroups)
	if beginErr != nil {
		// Unknown: the record may exist. A retry with the same ids reads the outcome;
		// prepared branches are settled by their shards' inquiry.
		return nil, beginErr
	}
	if len(res.Transfers) > 0 { // ID_REUSED: this chain is not the transaction its id names
		r.releaseStray(ctx, group, txnID, branches, res.Txn)
		return res.Transfers, nil
	}
	rec := res.Txn
	if res.Refusal != raftv1.Refusal_REFUSAL_UNSPECIFIED || rec == nil {
		return nil, fmt.Errorf("coordinator refused the transaction: %s", res.Message)
	}
	if rec.Decision == raftv1.TxnDecision_TXN_DECISION_UNSPECIFIED {
		dec, err := r.decision(ctx, chain, nil, votes)
		if err != nil {
			return nil, err
		}
		if dec.Decision == raftv1.TxnDecision_TXN_DECISION_COMMIT {
			// Begun, every branch prepared: committed. The branches are committed and the
			// decision logged after the answer; a driver or an inquiry logs the same
			// decision if this router cannot.
			*finish = dec
			if h := r.opts.AfterDecision; h != nil {
				if err := h(txnID); err != nil {
					return nil, err
				}
			}
			return committed(chain, res.Existed), nil
		}
		dres, err := r.exec(ctx, group, &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: dec}}, len(chain))
		if err != nil {
			return nil, err
		}
		if dres.Refusal != raftv1.Refusal_REFUSAL_UNSPECIFIED || dres.Txn == nil {
			return nil, fmt.Errorf("coordinator refused the decision: %s", dres.Message)
		}
		rec = dres.Txn
	}
	return r.answer(ctx, group, chain, branches, rec, res.Existed)
}

// answer is a chain's outcome from the decision that stands.
func (r *Router) answer(ctx context.Context, group uint64, chain []*ledgerv1.Transfer, branches []*raftv1.Branch,
	rec *raftv1.TxnRecord, existed bool) ([]*ledgerv1.TransferResult, error) {
	if len(rec.Transfers) == 0 {
		// An abort tombstone logged on a participant's inquiry first: nothing drives
		// this chain's branches but this router (and the inquiries).
		r.releaseStray(ctx, group, rec.TxnId, branches, rec)
		rec = rec.CloneVT()
		rec.Transfers = chain
	}
	if h := r.opts.AfterDecision; h != nil {
		if err := h(rec.TxnId); err != nil {
			return nil, err
		}
	}
	return coordinator.Outcome(rec, existed), nil
}

// settle decides begun, undecided transactions from their branches' stored states.
func (r *Router) settle(ctx context.Context, m *raftv1.ShardMap, recs []*raftv1.TxnRecord) error {
	errs := make([]error, len(recs))
	var wg sync.WaitGroup
	for i, rec := range recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = coordinator.Recover(ctx, r, coordinator.GroupOf(rec.TxnId, m.CoordinatorGroups), rec)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// committed is the answer for a committed chain.
func committed(chain []*ledgerv1.Transfer, existed bool) []*ledgerv1.TransferResult {
	st := ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED
	if existed {
		st = ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS
	}
	out := make([]*ledgerv1.TransferResult, len(chain))
	for i, t := range chain {
		out[i] = &ledgerv1.TransferResult{Id: t.GetId(), Status: st}
	}
	return out
}

// finishing is a transaction answered as committed, to be finished in the background.
type finishing struct {
	group    uint64
	dec      *raftv1.DecideTxn // its COMMIT decision (the prepare votes)
	branches []*raftv1.Branch
}

// finishCommits finishes, in the background, the transactions of a request that the
// router answered as committed with no decision logged: one branch command per shard
// commits every branch of them, then each transaction whose branches all acknowledged
// gets its decision and its forget in one command (DecideTxn.forget): two commands per
// transaction where the decision, the driver's commits and its forget took three, and
// no work for the coordinator's driver. A transaction whose branches did not all
// acknowledge gets the plain decision; the driver commits its branches. When the
// decision cannot be logged, the driver recovers the transaction after its router's
// deadline (its branches' stored states call for the same commit). Each transaction
// keeps its slot (reserveTxns) until it is finished: under overload new requests wait
// for the follow-up work of the answered ones instead of starving it.
func (r *Router) finishCommits(fs []finishing) {
	if len(fs) == 0 {
		return
	}
	go func() {
		defer r.releaseTxns(len(fs))
		ctx, cancel := context.WithTimeout(withBackground(r.ctx), r.opts.RequestTimeout)
		defer cancel()
		committed := r.commitFinished(ctx, fs)
		var wg sync.WaitGroup
		for i, f := range fs {
			if committed[i] {
				if h := r.opts.BeforeClose; h != nil && h(f.dec.TxnId) != nil {
					continue
				}
				f.dec.Forget = true
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := r.exec(ctx, f.group, &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: f.dec}}, 1)
				switch {
				case err != nil:
					r.log.Debug("log commit decision; the coordinator's driver will", "txn", f.dec.TxnId, "err", err)
				case res.GetTxn().GetDecision() != raftv1.TxnDecision_TXN_DECISION_COMMIT:
					// A committed transaction with another decision standing is a protocol bug.
					r.log.Error("a transaction answered as committed has another decision", "txn", f.dec.TxnId,
						"decision", res.GetTxn().GetDecision(), "message", res.GetMessage())
				}
			}()
		}
		wg.Wait()
	}()
}

// commitFinished commits the branches of the transactions fs (one command per shard)
// and tells which transactions had every branch acknowledge.
func (r *Router) commitFinished(ctx context.Context, fs []finishing) []bool {
	ok := make([]bool, len(fs))
	var refs []*raftv1.BranchRef
	var owner []int
	for i, f := range fs {
		if h := r.opts.BeforeFinish; h != nil && h(f.dec.TxnId) != nil {
			continue
		}
		ok[i] = true
		for _, b := range f.branches {
			refs = append(refs, &raftv1.BranchRef{TxnId: b.TxnId, Index: b.Index, AccountId: b.AccountId})
			owner = append(owner, i)
		}
	}
	if len(refs) == 0 {
		return ok
	}
	votes, err := r.ResolveBranches(ctx, refs, true)
	if err != nil {
		r.log.Debug("commit branches after the answer; the coordinator's driver will", "branches", len(refs), "err", err)
	}
	for k, i := range owner {
		var v *raftv1.Vote
		if k < len(votes) {
			v = votes[k]
		}
		if v.GetState() != raftv1.BranchState_BRANCH_STATE_COMMITTED {
			ok[i] = false
			if v != nil {
				// A branch of a committed transaction that cannot commit is a protocol
				// bug: the plain decision leaves it to the driver, which keeps the
				// transaction open (in doubt, visible to operators).
				r.log.Error("a branch of a committed transaction did not commit", "txn", v.GetTxnId(),
					"branch", v.GetIndex(), "state", v.GetState(), "message", v.GetMessage())
			}
		}
	}
	return ok
}

// resolvePending posts or voids a cross-shard pending transfer through its coordinator.
func (r *Router) resolvePending(ctx context.Context, m *raftv1.ShardMap, t *ledgerv1.Transfer) ([]*ledgerv1.TransferResult, error) {
	group := coordinator.GroupOf(pendingRef(t), m.CoordinatorGroups)
	res, err := r.exec(ctx, group, &raftv1.Command{Op: &raftv1.Command_ResolvePending{ResolvePending: &raftv1.ResolvePending{Transfer: t}}}, 1)
	if err != nil {
		return nil, err
	}
	if res.Refusal != raftv1.Refusal_REFUSAL_UNSPECIFIED || len(res.Transfers) != 1 {
		return nil, fmt.Errorf("coordinator refused the post/void: %s", res.Message)
	}
	return res.Transfers, nil
}

// decision is what a chain's votes call for (ts: the transfers when the decision creates
// the record); unavailable while a vote is missing (nothing may be decided then).
func (r *Router) decision(ctx context.Context, chain, ts []*ledgerv1.Transfer, votes []*raftv1.Vote) (*raftv1.DecideTxn, error) {
	txnID := chain[0].GetId()
	dec := coordinator.DecisionFromVotes(txnID, chain, ts, votes)
	if dec == nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf(
			"transaction %q: a participant did not answer; outcome unknown, retry with the same ids", txnID))
	}
	if h := r.opts.BeforeDecide; h != nil {
		if err := h(ctx, txnID); err != nil {
			return nil, err
		}
	}
	return dec, nil
}

// decide logs a prepared two-phase (pending) transfer's decision, HOLD or ABORT, with
// its transfers: the record is created decided (presumed abort, no Begin: a post must
// find it decided). It answers from the decision that stands.
func (r *Router) decide(ctx context.Context, m *raftv1.ShardMap, chain []*ledgerv1.Transfer, branches []*raftv1.Branch, votes []*raftv1.Vote) ([]*ledgerv1.TransferResult, error) {
	txnID := chain[0].GetId()
	group := coordinator.GroupOf(txnID, m.CoordinatorGroups)
	dec, err := r.decision(ctx, chain, chain, votes)
	if err != nil {
		return nil, err
	}
	res, err := r.exec(ctx, group, &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: dec}}, len(chain))
	if err != nil {
		return nil, err // unknown outcome: a retry with the same ids reads the decision
	}
	if len(res.Transfers) > 0 { // ID_REUSED: this chain is not the transaction its id names
		r.releaseStray(ctx, group, txnID, branches, res.Txn)
		return res.Transfers, nil
	}
	if res.Refusal != raftv1.Refusal_REFUSAL_UNSPECIFIED || res.Txn == nil {
		return nil, fmt.Errorf("coordinator refused the decision: %s", res.Message)
	}
	return r.answer(ctx, group, chain, branches, res.Txn, res.Existed)
}

// releaseStray aborts the branches this router prepared that the transaction's record
// does not own (rec nil: the record is not known; an abort is logged first, on
// condition). A branch the record owns is left to the coordinator's driver; one it does
// not own is never committed by anyone, so aborting it is safe. Best effort: the shards'
// inquiry is the safety net.
func (r *Router) releaseStray(ctx context.Context, group uint64, txnID string, mine []*raftv1.Branch, rec *raftv1.TxnRecord) {
	if rec == nil {
		dec := &raftv1.DecideTxn{TxnId: txnID, Decision: raftv1.TxnDecision_TXN_DECISION_ABORT, FailedIndex: -1,
			Status: ledgerv1.TransferStatus_TRANSFER_STATUS_ID_REUSED, Message: "a transfer id of the chain belongs to another transaction"}
		res, err := r.exec(ctx, group, &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: dec}}, 1)
		if err != nil || res.Txn == nil {
			return
		}
		rec = res.Txn
	}
	owned := make(map[uint32]string, len(rec.Branches))
	for _, b := range rec.Branches {
		owned[b.Index] = b.AccountId
	}
	abort := rec.Decision == raftv1.TxnDecision_TXN_DECISION_ABORT
	var stray []*raftv1.BranchRef
	for _, b := range mine {
		if acct, ok := owned[b.Index]; abort || !ok || acct != b.AccountId {
			stray = append(stray, &raftv1.BranchRef{TxnId: b.TxnId, Index: b.Index, AccountId: b.AccountId})
		}
	}
	if len(stray) > 0 {
		if _, err := r.ResolveBranches(ctx, stray, false); err != nil {
			r.log.Warn("release stray branches; the shards' inquiry will", "txn", txnID, "err", err)
		}
	}
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
	case *raftv1.Command_ForgetTxn:
		n = 1 + len(op.ForgetTxn.GetMoreTxnIds())
	}
	return max(n, 1)
}

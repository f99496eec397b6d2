package coordinator

import (
	"context"
	"log/slog"
	"time"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// ResolverOptions configure the participant-side resolver.
type ResolverOptions struct {
	// InquireAfter: a branch prepared longer than this asks its coordinator.
	InquireAfter time.Duration
	// Interval between scans.
	Interval time.Duration
	Now      func() time.Time
	Logger   *slog.Logger
}

// Resolver runs on every node for the shards whose leader is local. It is the
// participants' safety net: a branch prepared for too long asks its coordinator, which
// answers from its record or, with no decision yet, logs an abort first, so a deposed
// coordinator leader's late commit can never contradict what a participant was told.
// It also expires intra-shard pending transfers whose timeout passed.
type Resolver struct {
	shards  func() []uint64 // account shards whose leader is local
	coordOf func(txnID string) uint64
	cl      Cluster
	opts    ResolverOptions
	log     *slog.Logger
}

// NewResolver returns a resolver.
func NewResolver(ledShards func() []uint64, coordOf func(txnID string) uint64, cl Cluster, opts ResolverOptions) *Resolver {
	if opts.InquireAfter == 0 {
		opts.InquireAfter = 15 * time.Second
	}
	if opts.Interval == 0 {
		// Each scan reads every prepared branch of the shard: under load thousands.
		opts.Interval = 3 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Resolver{shards: ledShards, coordOf: coordOf, cl: cl, opts: opts, log: opts.Logger}
}

// Run scans until ctx ends.
func (r *Resolver) Run(ctx context.Context) {
	t := time.NewTicker(r.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, shard := range r.shards() {
			r.scan(ctx, shard)
		}
	}
}

func (r *Resolver) scan(ctx context.Context, shard uint64) {
	res, err := r.cl.Query(ctx, shard, &raftv1.Query{Op: &raftv1.Query_OpenWork{OpenWork: true}}, true)
	if err != nil {
		return
	}
	now := r.opts.Now().UnixNano()
	byTxn := map[string][]*raftv1.Branch{}
	for _, b := range res.Prepared {
		if now-b.PreparedAtUnixNano >= int64(r.opts.InquireAfter) {
			byTxn[b.Branch.TxnId] = append(byTxn[b.Branch.TxnId], b.Branch)
		}
	}
	for txn, branches := range byTxn {
		r.inquire(ctx, txn, branches)
	}
	var expired []*raftv1.TransferRef
	for _, p := range res.Pending {
		if p.ExpiresAtUnixNano > 0 && now >= p.ExpiresAtUnixNano {
			expired = append(expired, &raftv1.TransferRef{Id: p.Transfer.GetId(), DebitAccountId: p.Transfer.GetDebitAccountId()})
		}
	}
	if len(expired) > 0 {
		cmd := &raftv1.Command{Op: &raftv1.Command_ExpirePending{ExpirePending: &raftv1.ExpirePending{Transfers: expired}}}
		if _, err := r.cl.Propose(ctx, shard, cmd); err != nil {
			r.log.Warn("expire pending transfers", "shard", shard, "err", err)
		}
	}
}

// inquire asks the coordinator about a transaction and resolves the local branches
// accordingly.
func (r *Resolver) inquire(ctx context.Context, txnID string, branches []*raftv1.Branch) {
	group := r.coordOf(txnID)
	res, err := r.cl.Query(ctx, group, &raftv1.Query{Op: &raftv1.Query_Txns{Txns: &raftv1.IdList{Ids: []string{txnID}}}}, false)
	if err != nil {
		return
	}
	var rec *raftv1.TxnRecord
	if len(res.Txns) > 0 {
		rec = res.Txns[0]
	}
	switch {
	case rec == nil:
		// Presumed abort: nobody began the transaction (its router died before its
		// Begin was logged): log an abort tombstone. Refused if a Begin got logged
		// meanwhile; the next scan finds that record.
		dec := &raftv1.DecideTxn{TxnId: txnID, Decision: decAbort, FailedIndex: -1,
			Status: ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT, Message: "a participant's prepared branch timed out"}
		out, err := r.cl.Propose(ctx, group, &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: dec}})
		if err != nil || out.GetTxn() == nil {
			return
		}
		rec = out.Txn // the decision that stands (maybe one logged first)
	case rec.Decision == decNone:
		// Begun, undecided: its router owns it until its deadline (a loaded router is
		// slow, not dead); the next scan asks again. After it, decide it from the
		// branches' stored states.
		if routerOwns(rec, r.opts.Now().UnixNano()) {
			return
		}
		if rec, err = Recover(ctx, r.cl, group, rec); err != nil {
			r.log.Warn("inquiry: cannot decide the transaction yet", "txn", txnID, "err", err)
			return
		}
	}
	// A branch the record does not list (a transaction id reused with other accounts)
	// is never committed by anyone: abort it. The record's own branches follow the
	// decision; a held (two-phase) transfer keeps its reservation until post, void or
	// expiry.
	member := make(map[uint32]string, len(rec.Branches))
	for _, b := range rec.Branches {
		member[b.Index] = b.AccountId
	}
	var commitRefs, abortRefs []*raftv1.BranchRef
	for _, b := range branches {
		ref := &raftv1.BranchRef{TxnId: b.TxnId, Index: b.Index, AccountId: b.AccountId}
		acct, ok := member[b.Index]
		switch {
		case !ok || acct != b.AccountId:
			abortRefs = append(abortRefs, ref)
		case rec.Decision == decHold:
		case rec.Decision == decCommit:
			ref.Amount = rec.CommitAmount
			commitRefs = append(commitRefs, ref)
		default:
			abortRefs = append(abortRefs, ref)
		}
	}
	for _, side := range []struct {
		refs   []*raftv1.BranchRef
		commit bool
	}{{commitRefs, true}, {abortRefs, false}} {
		if len(side.refs) == 0 {
			continue
		}
		if _, err := r.cl.ResolveBranches(ctx, side.refs, side.commit); err != nil {
			r.log.Warn("resolve branches after inquiry", "txn", txnID, "err", err)
		}
	}
}

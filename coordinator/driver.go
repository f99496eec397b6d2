package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// Cluster is what the driver and the resolver need from the rest of the system (the
// router implements it): proposals to a coordinator group, branch commands routed to
// the shards owning the accounts, and reads.
type Cluster interface {
	// Propose runs one command on a raft group (batched, retried; idempotent).
	Propose(ctx context.Context, group uint64, cmd *raftv1.Command) (*raftv1.CommandResult, error)
	// PrepareBranches prepares branches on their shards; votes come back in order.
	PrepareBranches(ctx context.Context, branches []*raftv1.Branch) ([]*raftv1.Vote, error)
	// ResolveBranches commits or aborts branches on their shards; votes in order.
	ResolveBranches(ctx context.Context, refs []*raftv1.BranchRef, commit bool) ([]*raftv1.Vote, error)
	// Query reads a group (linearizable unless stale).
	Query(ctx context.Context, group uint64, q *raftv1.Query, stale bool) (*raftv1.QueryResult, error)
}

// Hooks let tests stop the driver at exact points of the protocol.
type Hooks struct {
	// BeforeDecide runs after every vote is in, before the decision is proposed. ctx
	// ends when the driver stops (a hook may block on it to hold the driver there).
	BeforeDecide func(ctx context.Context, txnID string)
	// BeforeResolve runs after the decision is applied, before branches are resolved.
	BeforeResolve func(ctx context.Context, txnID string)
}

// DriverOptions bound a driver's work.
type DriverOptions struct {
	// RecoverAfter: a begun transaction still undecided this long after its Begin and
	// past its router's deadline (TxnRecord.router_deadline_unix_nano: the router gave
	// up, or died) is decided by the driver: every branch prepared, then the decision
	// their stored states call for. Until then the router that began it is expected to
	// decide it: under load a router is slow, not dead, and recovering its transactions
	// then doubled the work (batched cross-shard transfers fell from ~5,000 to ~3,500
	// per second once requests took longer than RecoverAfter).
	RecoverAfter time.Duration
	// Tick is how often the driver looks for work without being woken.
	Tick time.Duration
	// InflightMax bounds the transactions driven at once (default: room for
	// ResolveBatchesMax full batches; with less, under load the commits fell behind
	// the decisions and open transactions piled up).
	InflightMax int
	Now         func() time.Time
	Hooks       Hooks
	Logger      *slog.Logger
}

func (o *DriverOptions) setDefaults() {
	if o.RecoverAfter == 0 {
		o.RecoverAfter = 2 * time.Second
	}
	if o.Tick == 0 {
		o.Tick = 50 * time.Millisecond
	}
	if o.InflightMax == 0 {
		o.InflightMax = ResolveBatchMax * ResolveBatchesMax
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Driver drives the transactions of one coordinator group. It runs on every node that
// hosts a replica of the group and acts only while that replica is the leader. On
// becoming leader it reloads every transaction not yet forgotten and drives it on.
// Every step is idempotent and every decision conditional, so a deposed leader's late
// actions cannot contradict the new leader's.
type Driver struct {
	group    uint64
	isLeader func() bool
	cl       Cluster
	opts     DriverOptions
	log      *slog.Logger

	wake chan struct{}
	mu   sync.Mutex
	// notified holds records seen applied since the last loop; overflow forces a reload.
	notified []*raftv1.TxnRecord
	overflow bool
	// tracked: open txns this leader knows; running: those with a goroutine.
	tracked map[string]*raftv1.TxnRecord
	running map[string]bool
	batches int  // resolveBatch goroutines running
	rescan  bool // a limit left tracked work unscheduled: the next loop looks at all
}

// NotifyMax bounds buffered notifications; past it the driver reloads instead.
const NotifyMax = 100_000

// Decided transactions are resolved in batches: one branch command per shard and one
// forget per ForgetChunkMax transactions for up to ResolveBatchMax of them, with at
// most ResolveBatchesMax batches under way.
const (
	ResolveBatchMax   = 4096
	ResolveBatchesMax = 4
	// ForgetChunkMax bounds the transactions one ForgetTxn command names.
	ForgetChunkMax = 1024
)

// NewDriver returns a driver for group; isLeader tells whether the local replica leads.
func NewDriver(group uint64, isLeader func() bool, cl Cluster, opts DriverOptions) *Driver {
	opts.setDefaults()
	return &Driver{group: group, isLeader: isLeader, cl: cl, opts: opts,
		log:  opts.Logger.With("coordinator_group", group),
		wake: make(chan struct{}, 1), tracked: map[string]*raftv1.TxnRecord{}, running: map[string]bool{}}
}

// Notify hands the driver records applied by the local replica. It never blocks.
func (d *Driver) Notify(results []*raftv1.BatchResult) {
	d.mu.Lock()
	for _, br := range results {
		for _, r := range br.GetResults() {
			if r.GetTxn() == nil {
				continue
			}
			if len(d.notified) >= NotifyMax {
				d.overflow = true
				continue
			}
			d.notified = append(d.notified, r.GetTxn())
		}
	}
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Run drives transactions until ctx ends.
func (d *Driver) Run(ctx context.Context) {
	t := time.NewTicker(d.opts.Tick)
	defer t.Stop()
	leading := false
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		woken := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.wake:
			woken = true
		}
		if !d.isLeader() {
			if leading {
				d.log.Info("no longer the coordinator leader")
			}
			leading = false
			d.mu.Lock()
			d.notified, d.overflow = nil, false
			d.mu.Unlock()
			continue
		}
		d.mu.Lock()
		reload := !leading || d.overflow
		notified := d.notified
		d.notified, d.overflow = nil, false
		d.mu.Unlock()
		if reload {
			recs, err := d.loadOpen(ctx)
			if err != nil {
				d.log.Warn("cannot load open transactions; will retry", "err", err)
				continue
			}
			if !leading {
				d.log.Info("became coordinator leader: resuming open transactions", "open", len(recs))
			}
			leading = true
			notified = append(recs, notified...)
		}
		d.mu.Lock()
		for _, rec := range notified {
			if rec.Forgotten {
				delete(d.tracked, rec.TxnId)
				continue
			}
			d.tracked[rec.TxnId] = rec
		}
		// On a wake only what was just applied can have become ready; the tick (or a
		// wake after a limit left work behind) looks at everything tracked.
		scan := d.tracked
		if woken && !reload && (len(d.running) >= d.opts.InflightMax || d.batches >= ResolveBatchesMax) {
			// Nothing can be scheduled before a batch finishes; its end wakes the loop,
			// which then looks at everything.
			d.rescan = true
			d.mu.Unlock()
			continue
		}
		if woken && !reload && !d.rescan {
			scan = make(map[string]*raftv1.TxnRecord, len(notified))
			for _, rec := range notified {
				if cur, ok := d.tracked[rec.TxnId]; ok {
					scan[rec.TxnId] = cur
				}
			}
		}
		d.rescan = false
		var expired []string
		var batch []*raftv1.TxnRecord
		now := d.opts.Now().UnixNano()
		for id, rec := range scan {
			if rec.Decision == decHold {
				if rec.ExpiresAtUnixNano > 0 && now >= rec.ExpiresAtUnixNano {
					expired = append(expired, id)
				}
				continue
			}
			if d.running[id] {
				continue
			}
			if len(d.running) >= d.opts.InflightMax {
				d.rescan = true
				continue
			}
			if rec.Decision == decNone && !d.recoverable(rec, now) {
				continue // its router decides it; the tick looks again
			}
			if rec.Decision == decCommit || rec.Decision == decAbort {
				if len(batch) < ResolveBatchMax && d.batches < ResolveBatchesMax {
					d.running[id] = true
					batch = append(batch, rec)
				} else {
					d.rescan = true
				}
				continue
			}
			d.running[id] = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.drive(ctx, rec)
			}()
		}
		if len(batch) > 0 {
			d.batches++
			wg.Add(1)
			go func(batch []*raftv1.TxnRecord) {
				defer wg.Done()
				d.resolveBatch(ctx, batch)
			}(batch)
			batch = nil
		}
		d.mu.Unlock()
		if len(expired) > 0 {
			d.expire(ctx, expired)
		}
	}
}

func (d *Driver) loadOpen(ctx context.Context) ([]*raftv1.TxnRecord, error) {
	res, err := d.cl.Query(ctx, d.group, &raftv1.Query{Op: &raftv1.Query_OpenTxns{OpenTxns: true}}, false)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	clear(d.tracked)
	d.mu.Unlock()
	return res.Txns, nil
}

func (d *Driver) expire(ctx context.Context, ids []string) {
	cmd := &raftv1.Command{Op: &raftv1.Command_ExpireTxns{ExpireTxns: &raftv1.ExpireTxns{TxnIds: ids}}}
	if _, err := d.cl.Propose(ctx, d.group, cmd); err != nil {
		d.log.Warn("expire held transactions", "err", err, "count", len(ids))
	}
	// The applied records come back through Notify and are driven from there.
}

// drive takes one transaction from where it is to forgotten (or held).
func (d *Driver) drive(ctx context.Context, rec *raftv1.TxnRecord) {
	defer func() {
		d.mu.Lock()
		delete(d.running, rec.TxnId)
		d.mu.Unlock()
	}()
	for attempt := 0; ctx.Err() == nil; attempt++ {
		if !d.isLeader() {
			return // the new leader resumes it
		}
		next, done, err := d.step(ctx, rec)
		if err != nil {
			d.log.Debug("txn step failed; retrying", "txn", rec.TxnId, "err", err)
			if sleep(ctx, backoff(attempt)) != nil {
				return
			}
			continue
		}
		d.mu.Lock()
		if done {
			delete(d.tracked, rec.TxnId)
		} else if next.Decision == decHold {
			d.tracked[rec.TxnId] = next
		}
		d.mu.Unlock()
		if done || next.Decision == decHold {
			return
		}
		rec, attempt = next, -1
	}
}

// recoverable tells whether the driver may decide an undecided, begun transaction at
// now: RecoverAfter after its Begin and past its router's deadline.
func (d *Driver) recoverable(rec *raftv1.TxnRecord, nowUnixNano int64) bool {
	return nowUnixNano-rec.BegunAtUnixNano >= int64(d.opts.RecoverAfter) && !routerOwns(rec, nowUnixNano)
}

// step advances a transaction by one phase and returns its new record; done when
// forgotten.
func (d *Driver) step(ctx context.Context, rec *raftv1.TxnRecord) (*raftv1.TxnRecord, bool, error) {
	switch rec.Decision {
	case decNone:
		votes, err := d.cl.PrepareBranches(ctx, rec.Branches)
		if err != nil {
			return nil, false, fmt.Errorf("prepare: %w", err)
		}
		dec := DecisionFromVotes(rec.TxnId, rec.Transfers, nil, votes)
		if d.opts.Hooks.BeforeDecide != nil {
			d.opts.Hooks.BeforeDecide(ctx, rec.TxnId)
			if ctx.Err() != nil {
				return nil, false, ctx.Err()
			}
		}
		if dec == nil {
			return nil, false, errors.New("votes incomplete")
		}
		res, err := d.cl.Propose(ctx, d.group, &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: dec}})
		if err != nil {
			return nil, false, fmt.Errorf("decide: %w", err)
		}
		if res.GetTxn() == nil {
			return nil, false, fmt.Errorf("decide refused: %s", res.GetMessage())
		}
		return res.Txn, false, nil
	case decCommit, decAbort:
		if d.opts.Hooks.BeforeResolve != nil {
			d.opts.Hooks.BeforeResolve(ctx, rec.TxnId)
			if ctx.Err() != nil {
				return nil, false, ctx.Err()
			}
		}
		commit := rec.Decision == decCommit
		refs := make([]*raftv1.BranchRef, len(rec.Branches))
		for i, b := range rec.Branches {
			refs[i] = &raftv1.BranchRef{TxnId: b.TxnId, Index: b.Index, AccountId: b.AccountId}
			if commit {
				refs[i].Amount = rec.CommitAmount
			}
		}
		votes, err := d.cl.ResolveBranches(ctx, refs, commit)
		if err != nil {
			return nil, false, fmt.Errorf("resolve branches: %w", err)
		}
		want := raftv1.BranchState_BRANCH_STATE_ABORTED
		if commit {
			want = raftv1.BranchState_BRANCH_STATE_COMMITTED
		}
		for _, v := range votes {
			if v.GetState() != want {
				// A branch contradicting the decision is a protocol bug: keep the txn
				// open (it stays in doubt, visible to operators) and say so loudly.
				d.log.Error("branch contradicts the decision", "txn", rec.TxnId, "branch", v.GetIndex(),
					"state", v.GetState(), "decision", rec.Decision, "message", v.GetMessage())
				return nil, false, fmt.Errorf("branch %d is %s, decision %s", v.GetIndex(), v.GetState(), rec.Decision)
			}
		}
		res, err := d.cl.Propose(ctx, d.group, &raftv1.Command{Op: &raftv1.Command_ForgetTxn{ForgetTxn: &raftv1.ForgetTxn{TxnId: rec.TxnId}}})
		if err != nil {
			return nil, false, fmt.Errorf("forget: %w", err)
		}
		if res.GetTxn() == nil {
			return nil, false, fmt.Errorf("forget refused: %s", res.GetMessage())
		}
		return res.Txn, true, nil
	default:
		return rec, false, nil
	}
}

// resolveBatch commits or aborts the branches of decided transactions (one branch
// command per shard for the whole batch) and forgets each transaction whose branches
// all acknowledged. The others stay tracked and are tried again on a later loop.
func (d *Driver) resolveBatch(ctx context.Context, recs []*raftv1.TxnRecord) {
	done := make([]bool, len(recs))
	defer func() {
		progress := false
		d.mu.Lock()
		for i, rec := range recs {
			delete(d.running, rec.TxnId)
			if done[i] {
				delete(d.tracked, rec.TxnId)
				progress = true
			}
		}
		d.batches--
		d.mu.Unlock()
		if progress { // more may be waiting; failures wait for the next tick
			select {
			case d.wake <- struct{}{}:
			default:
			}
		}
	}()
	if !d.isLeader() {
		return // the new leader resumes them
	}
	for _, rec := range recs {
		if h := d.opts.Hooks.BeforeResolve; h != nil {
			h(ctx, rec.TxnId)
			if ctx.Err() != nil {
				return
			}
		}
	}
	// owner[c][k] is the record (index into recs) of the k-th ref of side c.
	var refs [2][]*raftv1.BranchRef
	var owner [2][]int
	for i, rec := range recs {
		c := 0
		if rec.Decision == decCommit {
			c = 1
		}
		for _, b := range rec.Branches {
			ref := &raftv1.BranchRef{TxnId: b.TxnId, Index: b.Index, AccountId: b.AccountId}
			if c == 1 {
				ref.Amount = rec.CommitAmount
			}
			refs[c] = append(refs[c], ref)
			owner[c] = append(owner[c], i)
		}
	}
	ok := make([]bool, len(recs))
	for i := range ok {
		ok[i] = true
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for c := range refs {
		if len(refs[c]) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			commit := c == 1
			want := raftv1.BranchState_BRANCH_STATE_ABORTED
			if commit {
				want = raftv1.BranchState_BRANCH_STATE_COMMITTED
			}
			votes, err := d.cl.ResolveBranches(ctx, refs[c], commit)
			mu.Lock()
			defer mu.Unlock()
			for k, i := range owner[c] {
				var v *raftv1.Vote
				if k < len(votes) {
					v = votes[k]
				}
				switch {
				case v == nil:
					ok[i] = false
				case v.GetState() != want:
					// A branch contradicting the decision is a protocol bug: keep the txn
					// open (it stays in doubt, visible to operators) and say so loudly.
					d.log.Error("branch contradicts the decision", "txn", recs[i].TxnId, "branch", v.GetIndex(),
						"state", v.GetState(), "decision", recs[i].Decision, "message", v.GetMessage())
					ok[i] = false
				}
			}
			if err != nil {
				d.log.Debug("resolve branches failed; will retry", "err", err, "branches", len(refs[c]))
			}
		}()
	}
	wg.Wait()
	// Forget the resolved ones, ForgetChunkMax per command.
	var ids []string
	var idx []int
	for i, rec := range recs {
		if ok[i] {
			ids, idx = append(ids, rec.TxnId), append(idx, i)
		}
	}
	for lo := 0; lo < len(ids); lo += ForgetChunkMax {
		hi := min(lo+ForgetChunkMax, len(ids))
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := &raftv1.ForgetTxn{TxnId: ids[lo], MoreTxnIds: ids[lo+1 : hi]}
			res, err := d.cl.Propose(ctx, d.group, &raftv1.Command{Op: &raftv1.Command_ForgetTxn{ForgetTxn: f}})
			if err != nil || res.GetTxn() == nil {
				d.log.Debug("forget failed; will retry", "txns", hi-lo, "err", err, "message", res.GetMessage())
				return
			}
			mu.Lock()
			for _, i := range idx[lo:hi] {
				done[i] = true
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
}

func backoff(attempt int) time.Duration {
	return min(5*time.Millisecond<<min(attempt, 7), 500*time.Millisecond)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

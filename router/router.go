// Package router serves the public Connect API: it validates requests, routes work by
// slot to the owning shard, coalesces concurrent requests per shard into one raft entry,
// and retries through leader changes and stale shard maps (safe: every write is
// idempotent by its client-chosen id).
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"golang.org/x/sync/semaphore"

	"github.com/shardledger/shardledger/internal/node"
	"github.com/shardledger/shardledger/internal/wire"
	"github.com/shardledger/shardledger/ledger/ondisk"
	"github.com/shardledger/shardledger/meta"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// Backend is a node the router can propose to and read from (it hosts a replica of
// every group). *node.Node implements it.
type Backend interface {
	ID() uint64
	Propose(ctx context.Context, shardID uint64, cmd []byte) (sm.Result, error)
	Read(ctx context.Context, shardID uint64, q interface{}, stale bool) (interface{}, error)
	Leader(shardID uint64) (leader, term uint64, ok bool)
}

var _ Backend = (*node.Node)(nil)

// Options bound the router's work.
type Options struct {
	// ProposalTimeout bounds one raft proposal or read.
	ProposalTimeout time.Duration
	// RequestTimeout bounds a whole client request (retries included).
	RequestTimeout time.Duration
	// RetryMax bounds the attempts of one shard command.
	RetryMax int
	// BatchItemsMax bounds the items (accounts, transfers) coalesced into one raft entry.
	BatchItemsMax int
	// InflightPerShard bounds concurrent proposals per shard. Few in flight make big
	// entries, and on small machines the cost of a raft entry (not of a command)
	// dominates: measured on 2 cores, 64 clients, 8 -> 2 raised cross-shard transfers/s
	// by ~20% and intra-shard by ~10% (per-proposal p50 12 ms -> 9 ms). 2 -> 1 (with one
	// raft step worker per NodeHost, 3 rounds, medians): cross-shard 1 transfer per
	// request 1,586 -> 1,778/s, p99 at 500/s offered 40.5 -> 31.8 ms, batched cross-shard
	// 7,067 -> 7,600/s; intra-shard 1,000 per request 31,265 -> 28,466/s and 1 per
	// request 3,461 -> 3,240/s gave some back.
	InflightPerShard int
	// QueuedPerShard bounds commands waiting per shard; past it: resource_exhausted.
	QueuedPerShard int
	// BackgroundLinger is how long a background command (the coordinator's follow-up
	// work: decisions logged after the answer, branch commits, forgets, recovery) waits
	// for a client's command to the same group to ride along with, before it is
	// proposed on its own. Every raft entry costs a round whatever it carries, and a
	// group proposes one entry per round: proposed alone, follow-up work made the next
	// transaction's Begin and prepares wait a round behind it. 0: the default (20 ms);
	// < 0: none. 5 -> 20 ms (dev cluster, 2 rounds, alternated): one client, 100 %
	// cross-shard 79.9/65.5 -> 95.7/71.3 transfers/s; at 450/s offered p99 87/106 ->
	// 79/83 ms; 64 clients 1,025/1,011 -> 927/1,121 (within noise). Under load a client
	// command comes long before the linger ends; with few clients (likely, not traced)
	// a decision waited 5 ms, went alone, and the next Begin waited behind it.
	BackgroundLinger time.Duration
	// TxnInflightMax bounds the cross-shard transactions this router has under way:
	// running, or answered and being finished (their branches committed, their records
	// closed).
	// A request whose transactions do not fit waits for room, first come first served
	// (at most TxnAdmitWaitMax, and TxnQueuedMax transactions wait at most); past
	// either: resource_exhausted, nothing applied. (Refusing at once made big batches
	// retry with backoff: 4 clients of 8,000 transfers saw p90 13 s for p50 1.8 s.)
	TxnInflightMax int
	// TxnQueuedMax bounds the cross-shard transactions waiting for room (default
	// 4 × TxnInflightMax).
	TxnQueuedMax int
	// TxnAdmitWaitMax bounds how long a request waits for room (default 10 s; never
	// past the request's deadline).
	TxnAdmitWaitMax time.Duration
	// BeforeBegin, for tests: runs before a cross-shard transaction's Begin is
	// proposed (its branches are prepared meanwhile); an error stops there (the router
	// "dies" before the Begin: the branches stay prepared with no record).
	BeforeBegin func(ctx context.Context, txnID string) error
	// BeforeDecide, for tests: runs once a cross-shard transaction is begun and its
	// branches prepared, before the router answers or logs a decision; an error stops
	// there (the router "dies": begun, prepared, undecided).
	BeforeDecide func(ctx context.Context, txnID string) error
	// AfterDecision, for tests: runs once a cross-shard transaction is decided, before
	// the client is answered; an error replaces the answer (a lost response).
	AfterDecision func(txnID string) error
	// BeforeFinish, for tests: runs after the answer, before the router commits the
	// branches of a transaction it answered as committed; an error leaves them to the
	// coordinator's driver (the plain decision is logged, as when a branch command fails).
	BeforeFinish func(txnID string) error
	// BeforeClose, for tests: runs once those branches are committed, before the
	// decision and the forget are logged; an error logs nothing (the router "dies"
	// there: the driver recovers the transaction after the router's deadline).
	BeforeClose func(txnID string) error
	// Now is the proposer's clock (time enters the log only here).
	Now    func() time.Time
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.ProposalTimeout == 0 {
		// Short: a proposal forwarded to a leader that died is only given up at the
		// deadline, and the retry goes to the new leader.
		o.ProposalTimeout = 2 * time.Second
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 20 * time.Second
	}
	if o.RetryMax == 0 {
		o.RetryMax = 30
	}
	if o.BatchItemsMax == 0 {
		o.BatchItemsMax = 16_000
	}
	if o.InflightPerShard == 0 {
		o.InflightPerShard = 1
	}
	if o.QueuedPerShard == 0 {
		o.QueuedPerShard = 16_384 // a request of 8,000 cross-shard transfers queues 8,000 Begins
	}
	if o.TxnInflightMax == 0 {
		o.TxnInflightMax = 10_000
	}
	if o.BackgroundLinger == 0 {
		o.BackgroundLinger = 20 * time.Millisecond
	}
	if o.TxnQueuedMax == 0 {
		o.TxnQueuedMax = 4 * o.TxnInflightMax
	}
	if o.TxnAdmitWaitMax == 0 {
		o.TxnAdmitWaitMax = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Router routes requests to shards.
type Router struct {
	opts     Options
	backends []Backend
	log      *slog.Logger

	shardMap   atomic.Pointer[raftv1.ShardMap]
	refreshMu  sync.Mutex
	txns       *semaphore.Weighted // cross-shard transaction slots (TxnInflightMax)
	txnsQueued atomic.Int64        // cross-shard transactions waiting for slots

	mu     sync.Mutex
	queues map[uint64]*shardQueue
	// preferred backend index per group, moved on errors.
	prefMu sync.Mutex
	pref   map[uint64]int

	ctx    context.Context
	cancel context.CancelFunc
}

// New returns a router over backends (at least one).
func New(backends []Backend, opts Options) (*Router, error) {
	if len(backends) == 0 {
		return nil, errors.New("router: no backend")
	}
	opts.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Router{opts: opts, backends: backends, log: opts.Logger, queues: map[uint64]*shardQueue{},
		pref: map[uint64]int{}, ctx: ctx, cancel: cancel,
		txns: semaphore.NewWeighted(int64(opts.TxnInflightMax))}, nil
}

// Close stops the batchers.
func (r *Router) Close() { r.cancel() }

// errRetry wraps an error that a retry may cure.
type errRetry struct{ err error }

func (e errRetry) Error() string { return e.err.Error() }
func (e errRetry) Unwrap() error { return e.err }

// ErrOverloaded is returned when a shard's queue is full.
var ErrOverloaded = errors.New("shard queue is full")

func retryable(err error) bool {
	var r errRetry
	return errors.As(err, &r) || dragonboat.IsTempError(err)
}

// backend picks the backend for a group: the one hosting the leader if known, else the
// preferred one (moved on errors).
func (r *Router) backend(group uint64) (int, Backend) {
	for i, b := range r.backends {
		if l, _, ok := b.Leader(group); ok && l == b.ID() {
			return i, b
		}
	}
	r.prefMu.Lock()
	i := r.pref[group] % len(r.backends)
	r.prefMu.Unlock()
	return i, r.backends[i]
}

func (r *Router) demote(group uint64, i int) {
	r.prefMu.Lock()
	if r.pref[group]%len(r.backends) == i {
		r.pref[group] = i + 1
	}
	r.prefMu.Unlock()
}

// read runs a query on a group with retries.
func (r *Router) read(ctx context.Context, group uint64, q interface{}, stale bool) (interface{}, error) {
	var last error
	for attempt := 0; attempt < r.opts.RetryMax; attempt++ {
		i, b := r.backend(group)
		pctx, cancel := context.WithTimeout(ctx, r.opts.ProposalTimeout)
		res, err := b.Read(pctx, group, q, stale)
		cancel()
		if err == nil {
			return res, nil
		}
		last = err
		if !retryable(err) || ctx.Err() != nil {
			break
		}
		r.demote(group, i)
		if err := sleep(ctx, backoff(attempt)); err != nil {
			break
		}
	}
	return nil, fmt.Errorf("read group %d: %w", group, last)
}

func backoff(attempt int) time.Duration {
	d := 5 * time.Millisecond << min(attempt, 7)
	return min(d, 500*time.Millisecond)
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

// Map returns the cached shard map, loading it when absent.
func (r *Router) Map(ctx context.Context) (*raftv1.ShardMap, error) {
	if m := r.shardMap.Load(); m != nil {
		return m, nil
	}
	return r.RefreshMap(ctx, 0)
}

// RefreshMap reloads the shard map from the meta group unless the cache already has an
// epoch newer than seen.
func (r *Router) RefreshMap(ctx context.Context, seen uint64) (*raftv1.ShardMap, error) {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	if m := r.shardMap.Load(); m != nil && m.Epoch > seen {
		return m, nil
	}
	res, err := r.read(ctx, node.MetaShardID, meta.Query{}, false)
	if err != nil {
		return nil, fmt.Errorf("load shard map: %w", err)
	}
	m := res.(meta.QueryResult).Map
	if m.GetEpoch() == 0 {
		return nil, errRetry{errors.New("the cluster is not bootstrapped yet")}
	}
	r.shardMap.Store(m)
	return m, nil
}

// --- per-shard batching ---

type pending struct {
	cmd  *raftv1.Command
	size int
	done chan outcome
}

type outcome struct {
	res *raftv1.CommandResult
	err error
}

type shardQueue struct {
	ch  chan *pending // clients' commands: proposed as soon as a slot is free
	bg  chan *pending // background commands: held for BackgroundLinger (see Options)
	sem chan struct{}
}

func (r *Router) queue(shardID uint64) *shardQueue {
	r.mu.Lock()
	defer r.mu.Unlock()
	q, ok := r.queues[shardID]
	if !ok {
		q = &shardQueue{ch: make(chan *pending, r.opts.QueuedPerShard), bg: make(chan *pending, r.opts.QueuedPerShard),
			sem: make(chan struct{}, r.opts.InflightPerShard)}
		r.queues[shardID] = q
		go r.runQueue(shardID, q)
	}
	return q
}

// runQueue coalesces waiting commands into one raft entry per proposal. While every
// in-flight slot is busy, commands accumulate and the next entry carries them all.
// Background commands are held until a client's command goes (they ride in its entry),
// BackgroundLinger passes, or they fill half an entry.
func (r *Router) runQueue(shardID uint64, q *shardQueue) {
	var (
		carry    *pending   // a command that did not fit in the last entry
		held     []*pending // background commands waiting for company
		heldSize int
		linger   = time.NewTimer(time.Hour)
		lingerC  <-chan time.Time
	)
	linger.Stop()
	hold := func(p *pending) {
		if len(held) == 0 && r.opts.BackgroundLinger > 0 {
			linger.Reset(r.opts.BackgroundLinger)
			lingerC = linger.C
		}
		held, heldSize = append(held, p), heldSize+p.size
	}
	closed := func(first *pending) {
		if first != nil {
			held = append(held, first)
		}
		for _, p := range held {
			p.done <- outcome{err: errRetry{errors.New("router closed")}}
		}
	}
	for {
		first := carry
		carry = nil
		// With no linger, background commands left over from a full entry go at once.
		if first == nil && (len(held) == 0 || r.opts.BackgroundLinger > 0) {
			select {
			case <-r.ctx.Done():
				closed(nil)
				return
			case first = <-q.ch:
			case p := <-q.bg:
				hold(p)
				if r.opts.BackgroundLinger > 0 && heldSize < r.opts.BatchItemsMax/2 {
					continue
				}
			case <-lingerC:
			}
		}
		select {
		case <-r.ctx.Done():
			closed(first)
			return
		case q.sem <- struct{}{}:
		}
		var batch []*pending
		size := 0
		if first != nil {
			batch, size = append(batch, first), first.size
		}
		// The held background commands, as many as fit; the rest wait for the next.
		k := 0
		for k < len(held) && size+held[k].size <= r.opts.BatchItemsMax {
			batch, size = append(batch, held[k]), size+held[k].size
			heldSize -= held[k].size
			k++
		}
		held = append(held[:0], held[k:]...)
	drain:
		for size < r.opts.BatchItemsMax {
			select {
			case p := <-q.ch:
				if size+p.size > r.opts.BatchItemsMax {
					carry = p
					break drain
				}
				batch, size = append(batch, p), size+p.size
			default:
				break drain
			}
		}
	drainBackground:
		for size < r.opts.BatchItemsMax {
			select {
			case p := <-q.bg:
				if size+p.size > r.opts.BatchItemsMax {
					hold(p)
					break drainBackground
				}
				batch, size = append(batch, p), size+p.size
			default:
				break drainBackground
			}
		}
		if len(held) == 0 {
			linger.Stop()
			lingerC = nil
		} else if r.opts.BackgroundLinger > 0 {
			linger.Reset(r.opts.BackgroundLinger)
			lingerC = linger.C
		}
		if len(batch) == 0 {
			<-q.sem
			continue
		}
		go func() {
			defer func() { <-q.sem }()
			r.proposeBatch(shardID, batch)
		}()
	}
}

func (r *Router) proposeBatch(shardID uint64, batch []*pending) {
	i, be := r.backend(shardID)
	// The results come back through the replica on the proposing node: the others
	// need not encode them.
	b := &raftv1.Batch{Commands: make([]*raftv1.Command, len(batch)), ResultReplicaId: be.ID()}
	for i, p := range batch {
		b.Commands[i] = p.cmd
	}
	fail := func(err error) {
		for _, p := range batch {
			p.done <- outcome{err: err}
		}
	}
	data, err := wire.Marshal(b)
	if err != nil {
		fail(fmt.Errorf("marshal batch: %w", err))
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.opts.ProposalTimeout)
	res, err := be.Propose(ctx, shardID, data)
	cancel()
	if err != nil {
		if dragonboat.IsTempError(err) {
			r.demote(shardID, i)
			err = errRetry{err}
		}
		fail(fmt.Errorf("propose to shard %d: %w", shardID, err))
		return
	}
	out := &raftv1.BatchResult{}
	if res.Value != ondisk.ResultApplied {
		fail(fmt.Errorf("shard %d: unexpected result code %d", shardID, res.Value))
		return
	}
	if err := wire.Unmarshal(res.Data, out); err != nil || len(out.Results) != len(batch) {
		fail(fmt.Errorf("shard %d: bad batch result (%d results for %d commands): %v", shardID, len(out.Results), len(batch), err))
		return
	}
	for i, p := range batch {
		p.done <- outcome{res: out.Results[i]}
	}
}

// submit sends one command to a shard's batcher and waits for its result.
func (r *Router) submit(ctx context.Context, shardID uint64, cmd *raftv1.Command, size int) (*raftv1.CommandResult, error) {
	p := &pending{cmd: cmd, size: size, done: make(chan outcome, 1)}
	q := r.queue(shardID)
	ch := q.ch
	if isBackground(ctx) {
		ch = q.bg
	}
	select {
	case ch <- p:
	default:
		return nil, ErrOverloaded
	}
	select {
	case o := <-p.done:
		return o.res, o.err
	case <-ctx.Done():
		// The command may still be applied; a retry with the same ids is safe.
		return nil, ctx.Err()
	}
}

// exec runs one command on a shard, retrying temporary failures. The command is
// idempotent by its ids, so a retry after an unknown outcome is safe.
func (r *Router) exec(ctx context.Context, shardID uint64, cmd *raftv1.Command, size int) (*raftv1.CommandResult, error) {
	var last error
	for attempt := 0; attempt < r.opts.RetryMax; attempt++ {
		cmd.TimestampUnixNano = r.opts.Now().UnixNano()
		res, err := r.submit(ctx, shardID, cmd, size)
		if err == nil {
			return res, nil
		}
		last = err
		if !retryable(err) || ctx.Err() != nil {
			return nil, err
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return nil, last
		}
	}
	return nil, last
}

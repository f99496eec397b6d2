// Package diskrsm adapts a pure state machine core (the account shard's, the
// coordinator's) to dragonboat's IOnDiskStateMachine, with its state in pebble
// (internal/kvstore): each Update's writes and applied index committed to the store
// atomically (kvstore keeps small commits pending and writes them to pebble in larger
// batches).
package diskrsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	sm "github.com/lni/dragonboat/v4/statemachine"

	"github.com/shardledger/shardledger/internal/kvstore"
	"github.com/shardledger/shardledger/internal/wire"
	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// ResultApplied marks an entry whose Result.Data holds a BatchResult.
const ResultApplied uint64 = 1

// Applier applies the commands of one batch of entries to an overlay.
type Applier interface {
	ApplyBatch(*raftv1.Batch) (*raftv1.BatchResult, error)
	Overlay() *ledger.Overlay
}

// Core is a pure state machine: how to apply entries and answer queries.
type Core struct {
	NewApplier func(ledger.Reader) (Applier, error)
	Read       func(*kvstore.Store, *raftv1.Query) (*raftv1.QueryResult, error)
	// CacheBytes bounds the replica's apply cache (0: CacheBytesDefault; at most
	// CacheBytesMax).
	CacheBytes int
	// CacheEager, when set, names keys the apply cache keeps as soon as they are written
	// (records that are read again soon, such as accounts).
	CacheEager func(key []byte) bool
	// AbsentPrefixes, when set, are the key families (first bytes) whose lookups the
	// apply path answers "not stored" from an in-memory filter of every such key the
	// replica holds, without pebble: families whose lookups mostly miss (new ids).
	AbsentPrefixes []byte
	// OnApplied, when set, sees every result once its batch is committed (a thin edge
	// for drivers that must react to applied entries; it must not block).
	OnApplied func(shardID uint64, results []*raftv1.BatchResult)
}

// StateMachine is one replica.
type StateMachine struct {
	shardID   uint64
	replicaID uint64 // 0 (made by New): encodes every entry's results
	dir       string
	core      Core
	blocks    *kvstore.Cache // shared block cache; nil: the store's own
	store     *kvstore.Store
	cache     *applyCache   // apply path only
	filter    *absentFilter // apply path only; nil when the core names no families
}

var _ sm.IOnDiskStateMachine = (*StateMachine)(nil)

// The overlay is merged into the store's pending writes without copies (kvstore.Commit).
var _ kvstore.StringWrites = (*ledger.Overlay)(nil)

// Factory returns dragonboat's constructor for replicas stored under dataDir, their
// stores sharing blocks (nil: a cache of their own each).
func Factory(dataDir string, core Core, blocks *kvstore.Cache) sm.CreateOnDiskStateMachineFunc {
	return func(shardID, replicaID uint64) sm.IOnDiskStateMachine {
		m := New(filepath.Join(dataDir, fmt.Sprintf("shard-%d-replica-%d", shardID, replicaID)), core)
		m.shardID, m.replicaID = shardID, replicaID
		m.blocks = blocks
		return m
	}
}

// New returns a replica whose pebble database lives in dir.
func New(dir string, core Core) *StateMachine { return &StateMachine{dir: dir, core: core} }

// Open opens the store and returns the last applied index.
func (s *StateMachine) Open(<-chan struct{}) (uint64, error) {
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return 0, fmt.Errorf("create %s: %w", s.dir, err)
	}
	st, err := kvstore.Open(s.dir, s.blocks)
	if err != nil {
		return 0, err
	}
	s.store = st
	if len(s.core.AbsentPrefixes) > 0 {
		s.filter = newAbsentFilter(s.core.AbsentPrefixes, FilterKeysMax)
		if err := s.rebuildFilter(); err != nil {
			return 0, err
		}
	}
	return st.Applied()
}

// rebuildFilter fills the absent-key filter from the store (after Open and recovery).
func (s *StateMachine) rebuildFilter() error {
	if s.filter == nil {
		return nil
	}
	sn := s.store.NewSnapshot()
	defer sn.Close()
	return s.filter.rebuild(sn)
}

// Update applies a batch of entries and commits their writes with the applied index.
// Business rejections are results; an error here means storage failed (and stops the node).
func (s *StateMachine) Update(entries []sm.Entry) ([]sm.Entry, error) {
	if len(entries) == 0 {
		return entries, nil
	}
	if s.cache == nil {
		s.cache = newApplyCache(s.store, s.core.CacheBytes, s.core.CacheEager, s.filter)
	}
	a, err := s.core.NewApplier(s.cache)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := s.cache.release(); err != nil {
			// Only a leaked iterator: the batch is applied either way.
			slog.Default().Error("release apply view", "shard", s.shardID, "err", err)
		}
	}()
	var all []*raftv1.BatchResult
	if s.core.OnApplied != nil {
		all = make([]*raftv1.BatchResult, 0, len(entries))
	}
	for i := range entries {
		res, resultReplica, err := applyEntry(a, entries[i].Cmd)
		if err != nil {
			return nil, fmt.Errorf("apply entry %d: %w", entries[i].Index, err)
		}
		var data []byte
		if resultReplica == 0 || resultReplica == s.replicaID {
			if data, err = wire.Marshal(res); err != nil {
				return nil, fmt.Errorf("marshal result: %w", err)
			}
		}
		entries[i].Result = sm.Result{Value: ResultApplied, Data: data}
		if all != nil {
			all = append(all, res)
		}
	}
	ov := a.Overlay()
	if err := s.store.Commit(ov, entries[len(entries)-1].Index); err != nil {
		s.cache.clear()
		if s.filter != nil {
			s.filter.off = true // the batch may be partly in: no key can be called absent
		}
		return nil, err
	}
	s.cache.committed(ov)
	if s.core.OnApplied != nil {
		s.core.OnApplied(s.shardID, all)
	}
	return entries, nil
}

// applyEntry applies one entry; it returns the results and the replica that encodes
// them for its proposer (Batch.result_replica_id: 0 for every replica).
func applyEntry(a Applier, cmd []byte) (*raftv1.BatchResult, uint64, error) {
	b := &raftv1.Batch{}
	if err := wire.Unmarshal(cmd, b); err != nil {
		// Never applied; every replica decodes the same bytes the same way.
		return &raftv1.BatchResult{Results: []*raftv1.CommandResult{{
			Refusal: raftv1.Refusal_REFUSAL_MALFORMED, Message: "entry does not decode: " + err.Error()}}}, 0, nil
	}
	res, err := a.ApplyBatch(b)
	return res, b.GetResultReplicaId(), err
}

// Lookup serves reads: a *raftv1.Query, answered with a *raftv1.QueryResult.
func (s *StateMachine) Lookup(q interface{}) (interface{}, error) {
	query, ok := q.(*raftv1.Query)
	if !ok {
		return nil, fmt.Errorf("lookup: unexpected query type %T", q)
	}
	return s.core.Read(s.store, query)
}

// ReadCommon answers the queries every core shares (state hash, applied index); ok is
// false for any other query.
func ReadCommon(st *kvstore.Store, q *raftv1.Query) (*raftv1.QueryResult, bool, error) {
	if !q.GetStateHash() {
		return nil, false, nil
	}
	out := &raftv1.QueryResult{}
	sn := st.NewSnapshot()
	defer sn.Close()
	var err error
	out.StateHash, err = sn.Hash(func() kvstore.Hasher { return ledger.NewHasher() })
	if err != nil {
		return nil, true, err
	}
	v, _, err := sn.Get(kvstore.AppliedKey)
	if err == nil && len(v) == 8 {
		out.AppliedIndex = binary.BigEndian.Uint64(v)
	}
	return out, true, err
}

// Sync makes applied state durable.
func (s *StateMachine) Sync() error { return s.store.Sync() }

// PrepareSnapshot takes a pebble snapshot; SaveSnapshot streams it while updates go on.
func (s *StateMachine) PrepareSnapshot() (interface{}, error) { return s.store.NewSnapshot(), nil }

// SaveSnapshot streams the prepared view.
func (s *StateMachine) SaveSnapshot(ctx interface{}, w io.Writer, done <-chan struct{}) error {
	sn, ok := ctx.(*kvstore.Snapshot)
	if !ok {
		return fmt.Errorf("save snapshot: unexpected context %T", ctx)
	}
	defer sn.Close()
	return snapshotErr(sn.Save(w, done))
}

// RecoverFromSnapshot replaces the whole state with the snapshot's.
func (s *StateMachine) RecoverFromSnapshot(r io.Reader, done <-chan struct{}) error {
	if s.cache != nil {
		s.cache.clear()
	}
	if s.filter != nil {
		s.filter.off = true // until rebuilt from the recovered state
	}
	if err := s.store.Recover(r, done); err != nil {
		return snapshotErr(err)
	}
	return s.rebuildFilter()
}

// snapshotErr reports a stop requested through done as sm.ErrSnapshotStopped: dragonboat
// panics on any other error from RecoverFromSnapshot, and on any from SaveSnapshot but
// ErrSnapshotStopped, ErrSnapshotAborted and ErrSnapshotStreaming.
func snapshotErr(err error) error {
	if errors.Is(err, kvstore.ErrStopped) {
		return sm.ErrSnapshotStopped
	}
	return err
}

// Close syncs and closes the store.
func (s *StateMachine) Close() error {
	if s.store == nil {
		// Never opened (the NodeHost stopped while the replica was starting): nothing
		// to close. An error here would make dragonboat panic.
		return nil
	}
	return s.store.Close()
}

// Dir is where the replica's pebble database lives.
func (s *StateMachine) Dir() string { return s.dir }

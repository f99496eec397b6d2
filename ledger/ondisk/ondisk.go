// Package ondisk adapts the pure account-shard state machine (package ledger) to
// dragonboat's IOnDiskStateMachine, with its state in pebble (internal/kvstore).
package ondisk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/shardledger/shardledger/internal/kvstore"
	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// ResultApplied marks an entry whose Result.Data holds a BatchResult.
const ResultApplied uint64 = 1

// StateMachine is one replica of an account shard.
type StateMachine struct {
	dir   string
	store *kvstore.Store
}

var _ sm.IOnDiskStateMachine = (*StateMachine)(nil)

// Factory returns dragonboat's constructor for shard replicas stored under dataDir.
func Factory(dataDir string) sm.CreateOnDiskStateMachineFunc {
	return func(shardID, replicaID uint64) sm.IOnDiskStateMachine {
		return New(filepath.Join(dataDir, fmt.Sprintf("shard-%d-replica-%d", shardID, replicaID)))
	}
}

// New returns a replica whose pebble database lives in dir.
func New(dir string) *StateMachine { return &StateMachine{dir: dir} }

// Open opens the store and returns the last applied index.
func (s *StateMachine) Open(<-chan struct{}) (uint64, error) {
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return 0, fmt.Errorf("create %s: %w", s.dir, err)
	}
	st, err := kvstore.Open(s.dir)
	if err != nil {
		return 0, err
	}
	s.store = st
	return st.Applied()
}

// Update applies a batch of entries in one pebble batch, applied index included.
// Business rejections are results; an error here means storage failed (and stops the node).
func (s *StateMachine) Update(entries []sm.Entry) ([]sm.Entry, error) {
	if len(entries) == 0 {
		return entries, nil
	}
	a, err := ledger.NewApplier(s.store)
	if err != nil {
		return nil, err
	}
	for i := range entries {
		res, err := applyEntry(a, entries[i].Cmd)
		if err != nil {
			return nil, fmt.Errorf("apply entry %d: %w", entries[i].Index, err)
		}
		data, err := proto.Marshal(res)
		if err != nil {
			return nil, fmt.Errorf("marshal result: %w", err)
		}
		entries[i].Result = sm.Result{Value: ResultApplied, Data: data}
	}
	if err := s.store.Commit(a.Overlay(), entries[len(entries)-1].Index); err != nil {
		return nil, err
	}
	return entries, nil
}

func applyEntry(a *ledger.Applier, cmd []byte) (*raftv1.BatchResult, error) {
	b := &raftv1.Batch{}
	if err := proto.Unmarshal(cmd, b); err != nil {
		// Never applied; every replica decodes the same bytes the same way.
		return &raftv1.BatchResult{Results: []*raftv1.CommandResult{{
			Refusal: raftv1.Refusal_REFUSAL_MALFORMED, Message: "entry does not decode: " + err.Error()}}}, nil
	}
	return a.ApplyBatch(b)
}

// Lookup serves reads: a *raftv1.Query, answered with a *raftv1.QueryResult.
func (s *StateMachine) Lookup(q interface{}) (interface{}, error) {
	query, ok := q.(*raftv1.Query)
	if !ok {
		return nil, fmt.Errorf("lookup: unexpected query type %T", q)
	}
	return Read(s.store, query)
}

// Read answers a query from a store.
func Read(st *kvstore.Store, q *raftv1.Query) (*raftv1.QueryResult, error) {
	out := &raftv1.QueryResult{}
	var err error
	switch op := q.GetOp().(type) {
	case *raftv1.Query_Accounts:
		out.Accounts, out.NotFound, err = ledger.ReadAccounts(st, op.Accounts.GetIds())
	case *raftv1.Query_Transfers:
		out.Transfers, out.NotFound, err = ledger.ReadTransfers(st, op.Transfers.GetIds())
	case *raftv1.Query_StateHash:
		sn := st.NewSnapshot()
		defer sn.Close()
		out.StateHash, err = sn.Hash(func() kvstore.Hasher { return ledger.NewHasher() })
		if err == nil {
			var v []byte
			if v, _, err = sn.Get(kvstore.AppliedKey); err == nil && len(v) == 8 {
				out.AppliedIndex = binary.BigEndian.Uint64(v)
			}
		}
	case *raftv1.Query_OpenWork:
		sn := st.NewSnapshot()
		defer sn.Close()
		out.Prepared, out.Pending, err = ledger.ReadOpenWork(sn)
	case *raftv1.Query_Totals:
		sn := st.NewSnapshot()
		defer sn.Close()
		out.Totals, err = ledger.ReadTotals(sn)
	case *raftv1.Query_ShardState:
		out.ShardState, err = ledger.LoadShardState(st)
		if err == nil {
			out.AppliedIndex, err = st.Applied()
		}
	default:
		err = fmt.Errorf("unknown query %T", op)
	}
	return out, err
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
	return snapshotErr(s.store.Recover(r, done))
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
		return errors.New("close: not open")
	}
	return s.store.Close()
}

// Package ondisk binds the account shard's pure state machine (package ledger) to the
// dragonboat on-disk adapter (internal/diskrsm) and answers the shard's queries.
package ondisk

import (
	"fmt"

	sm "github.com/lni/dragonboat/v4/statemachine"

	"github.com/shardledger/shardledger/internal/diskrsm"
	"github.com/shardledger/shardledger/internal/kvstore"
	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// ResultApplied marks an entry whose Result.Data holds a BatchResult.
const ResultApplied = diskrsm.ResultApplied

// StateMachine is one replica of an account shard.
type StateMachine = diskrsm.StateMachine

// ApplyCacheBytes bounds each account shard replica's apply cache. It holds what the
// replica's transfers touch (an account costs about 80 bytes in it, and about 30 more in
// its index), growing with that and not with the number of writes (arena.go): with 10
// thousand accounts a replica's cache stays at a few MiB. 512 MiB keeps every account
// of a shard of 2.5 million (10 million accounts over 4 shards) in memory, where a read
// from pebble costs several microseconds (index and data block lookups in every level,
// a decompression when the block cache misses, and the block cache goes cold after each
// compaction); the apply path's reads from pebble were 13 % of ledgerd's CPU under
// uniform load on 10 million accounts with 128 MiB. A dev cluster's 12 shard replicas
// may take up to 6 GiB with it; measured at 10 million accounts after 4 minutes of
// uniform load, the dev process's RSS was 7.4-7.6 GB against 6.8-6.9 GB with the
// 128 MiB first-in, first-out cache (and 0.7 GB with 10 thousand accounts).
const ApplyCacheBytes = 512 << 20

// Core is the account shard's core.
var Core = diskrsm.Core{
	NewApplier: func(r ledger.Reader) (diskrsm.Applier, error) { return ledger.NewApplier(r) },
	Read:       Read,
	CacheBytes: ApplyCacheBytes,
	CacheEager: ledger.IsHotKey,
	// A prepare looks up its branch, a transfer its id: mostly keys not stored yet.
	AbsentPrefixes: ledger.MostlyNewKeyPrefixes(),
}

// Factory returns dragonboat's constructor for shard replicas stored under dataDir, with
// blocks as their block cache (nil: one each).
func Factory(dataDir string, blocks *kvstore.Cache) sm.CreateOnDiskStateMachineFunc {
	return diskrsm.Factory(dataDir, Core, blocks)
}

// New returns a shard replica whose pebble database lives in dir.
func New(dir string) *StateMachine { return diskrsm.New(dir, Core) }

// Read answers a shard query from a store.
func Read(st *kvstore.Store, q *raftv1.Query) (*raftv1.QueryResult, error) {
	if out, ok, err := diskrsm.ReadCommon(st, q); ok {
		return out, err
	}
	out := &raftv1.QueryResult{}
	var err error
	switch op := q.GetOp().(type) {
	case *raftv1.Query_Accounts:
		rd := st.NewPointReader() // one view of every id, filters consulted
		defer rd.Close()
		out.Accounts, out.NotFound, err = ledger.ReadAccounts(rd, op.Accounts.GetIds())
	case *raftv1.Query_Transfers:
		rd := st.NewPointReader()
		defer rd.Close()
		out.Transfers, out.NotFound, err = ledger.ReadTransfers(rd, op.Transfers.GetIds())
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
		err = fmt.Errorf("query %T is not for an account shard", op)
	}
	return out, err
}

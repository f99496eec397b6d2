package coordinator

import (
	"fmt"

	sm "github.com/lni/dragonboat/v4/statemachine"

	"github.com/shardledger/shardledger/internal/diskrsm"
	"github.com/shardledger/shardledger/internal/kvstore"
	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// NewCore binds the coordinator's pure state machine to the on-disk adapter. onApplied
// (may be nil) sees every applied result: the driver learns of new and decided
// transactions from it.
func NewCore(onApplied func(group uint64, results []*raftv1.BatchResult)) diskrsm.Core {
	return diskrsm.Core{
		NewApplier:     func(r ledger.Reader) (diskrsm.Applier, error) { return NewApplier(r) },
		Read:           Read,
		CacheEager:     IsRecordKey,
		AbsentPrefixes: MostlyNewKeyPrefixes(),
		OnApplied:      onApplied,
	}
}

// Factory returns dragonboat's constructor for coordinator replicas under dataDir, with
// blocks as their block cache (nil: one each).
func Factory(dataDir string, core diskrsm.Core, blocks *kvstore.Cache) sm.CreateOnDiskStateMachineFunc {
	return diskrsm.Factory(dataDir, core, blocks)
}

// Read answers a coordinator query.
func Read(st *kvstore.Store, q *raftv1.Query) (*raftv1.QueryResult, error) {
	if out, ok, err := diskrsm.ReadCommon(st, q); ok {
		return out, err
	}
	out := &raftv1.QueryResult{}
	var err error
	switch op := q.GetOp().(type) {
	case *raftv1.Query_Txns:
		rd := st.NewPointReader()
		defer rd.Close()
		out.Txns, err = ReadTxns(rd, op.Txns.GetIds())
	case *raftv1.Query_OpenTxns:
		sn := st.NewSnapshot()
		defer sn.Close()
		out.Txns, err = ReadOpen(sn)
	case *raftv1.Query_Transfers:
		// One view for both reads: a decision applied between them would otherwise
		// hide a committed transfer (not found as decided, not listed as undecided).
		rd := st.NewPointReader()
		defer rd.Close()
		out.Transfers, out.NotFound, err = ReadTransfers(rd, op.Transfers.GetIds())
		if err == nil {
			out.Txns, err = ReadUndecided(rd, op.Transfers.GetIds())
		}
	case *raftv1.Query_ShardState:
		out.AppliedIndex, err = st.Applied()
	default:
		err = fmt.Errorf("query %T is not for a coordinator group", op)
	}
	return out, err
}

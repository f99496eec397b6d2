// Package meta is the shard map: a pure state machine (Apply) and its dragonboat adapter
// (StateMachine, an in-memory IStateMachine whose snapshots dragonboat persists).
package meta

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Result codes of Apply.
const (
	ResultApplied  uint64 = 1
	ResultRefused  uint64 = 2
	ResultNoChange uint64 = 3
)

// Apply applies one command to a map (mutating it) and returns a result code and reason.
func Apply(m *raftv1.ShardMap, cmd *raftv1.MetaCommand) (uint64, string) {
	switch op := cmd.GetOp().(type) {
	case *raftv1.MetaCommand_Init:
		if m.Epoch != 0 {
			return ResultNoChange, "the shard map is already initialized"
		}
		if err := Validate(op.Init); err != nil {
			return ResultRefused, err.Error()
		}
		proto.Reset(m)
		proto.Merge(m, op.Init)
		return ResultApplied, ""
	default:
		return ResultRefused, fmt.Sprintf("unknown meta command %T", op)
	}
}

// Validate checks a shard map: every slot owned by a known shard, epoch set.
func Validate(m *raftv1.ShardMap) error {
	if m.GetEpoch() == 0 {
		return fmt.Errorf("epoch must be positive")
	}
	if m.GetSlotCount() == 0 || int(m.GetSlotCount()) != len(m.GetSlotShard()) {
		return fmt.Errorf("slot_shard has %d entries for %d slots", len(m.GetSlotShard()), m.GetSlotCount())
	}
	known := map[uint64]bool{}
	for _, s := range m.GetShards() {
		if s.GetShardId() == 0 || len(s.GetNodes()) == 0 {
			return fmt.Errorf("shard %d has no replicas", s.GetShardId())
		}
		known[s.GetShardId()] = true
	}
	for slot, sh := range m.GetSlotShard() {
		if !known[sh] {
			return fmt.Errorf("slot %d maps to unknown shard %d", slot, sh)
		}
	}
	return nil
}

// Raft group ids: account shard k is group k; the meta group and the coordinator
// groups live above every shard id.
const (
	MetaGroupID          uint64 = 1_000_000
	CoordinatorGroupBase uint64 = 2_000_000
)

// Initial builds the bootstrap map: slotCount slots split into contiguous, even ranges
// over shards 1..shardCount, every shard replicated on every node, and coordinatorCount
// coordinator groups.
func Initial(slotCount uint32, shardCount, coordinatorCount int, nodes []*raftv1.NodeInfo) *raftv1.ShardMap {
	m := &raftv1.ShardMap{Epoch: 1, SlotCount: slotCount, Nodes: nodes}
	for k := 0; k < coordinatorCount; k++ {
		m.CoordinatorGroups = append(m.CoordinatorGroups, CoordinatorGroupBase+uint64(k))
	}
	ids := make([]uint64, 0, len(nodes))
	for _, n := range nodes {
		ids = append(ids, n.GetId())
	}
	for i := 1; i <= shardCount; i++ {
		m.Shards = append(m.Shards, &raftv1.ShardReplicas{ShardId: uint64(i), Nodes: ids})
	}
	m.SlotShard = make([]uint64, slotCount)
	for s := uint32(0); s < slotCount; s++ {
		m.SlotShard[s] = uint64(int(s)*shardCount/int(slotCount)) + 1
	}
	return m
}

// SlotsOf lists the slots a shard owns in a map.
func SlotsOf(m *raftv1.ShardMap, shardID uint64) []uint32 {
	var out []uint32
	for s, sh := range m.GetSlotShard() {
		if sh == shardID {
			out = append(out, uint32(s))
		}
	}
	return out
}

// Ranges compresses slot -> shard into contiguous ranges (end exclusive).
func Ranges(m *raftv1.ShardMap) []*ledgerv1.SlotRange {
	var out []*ledgerv1.SlotRange
	for s, sh := range m.GetSlotShard() {
		if n := len(out); n > 0 && out[n-1].ShardId == sh && out[n-1].End == uint32(s) {
			out[n-1].End++
			continue
		}
		out = append(out, &ledgerv1.SlotRange{Start: uint32(s), End: uint32(s) + 1, ShardId: sh})
	}
	return out
}

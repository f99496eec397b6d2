// Package node runs one ledger node: a dragonboat NodeHost hosting a replica of the meta
// group and of every account shard, with the shard state machines on pebble.
package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"
	sm "github.com/lni/dragonboat/v4/statemachine"

	"github.com/shardledger/shardledger/coordinator"
	"github.com/shardledger/shardledger/internal/kvstore"
	"github.com/shardledger/shardledger/ledger/ondisk"
	"github.com/shardledger/shardledger/meta"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// MetaShardID is the raft shard id of the meta group. Account shard k is raft shard k.
const MetaShardID = meta.MetaGroupID

// Config describes one node.
type Config struct {
	NodeID      uint64
	RaftAddress string
	// Zone is a placement label reported in the cluster status.
	Zone string
	// DataDir holds this node's raft log and state machines.
	DataDir string
	// Members maps every node id of the cluster to its raft address. Every group has a
	// replica on every member (3 or 5 nodes).
	Members map[uint64]string
	// ShardCount is the number of account shards (fixed at cluster creation).
	ShardCount int
	// CoordinatorCount is the number of coordinator groups (fixed at cluster creation).
	CoordinatorCount int
	// OnCoordinatorApplied sees what the local coordinator replicas apply (the drivers'
	// wake-up); it must not block.
	OnCoordinatorApplied func(group uint64, results []*raftv1.BatchResult)
	// RTTMillisecond is the network round trip dragonboat assumes (default 50).
	RTTMillisecond uint64
	// ElectionRTT in RTTs (default 10).
	ElectionRTT uint64
	// BlockCacheBytes is the block cache all the node's state machine stores share
	// (default BlockCacheBytesDefault).
	BlockCacheBytes int64
	// TransportFactory replaces dragonboat's TCP transport (tests inject faults).
	TransportFactory config.TransportFactory
	Logger           *slog.Logger
}

// Node is a running node.
type Node struct {
	cfg    Config
	nh     *dragonboat.NodeHost
	blocks *kvstore.Cache // shared by the replicas' stores
	log    *slog.Logger
}

// QuietDragonboat lowers dragonboat's own loggers to errors (elections are logged as warnings).
func QuietDragonboat() {
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "raftpb", "logdb", "config", "settings", "grpc"} {
		logger.GetLogger(name).SetLevel(logger.ERROR)
	}
}

// Start starts the NodeHost and every replica. On a new data directory it creates the
// groups with all members; on restart dragonboat uses what it recorded.
func Start(cfg Config) (*Node, error) {
	if cfg.NodeID == 0 || cfg.RaftAddress == "" || cfg.DataDir == "" {
		return nil, errors.New("node: node id, raft address and data dir are required")
	}
	if _, ok := cfg.Members[cfg.NodeID]; !ok {
		return nil, fmt.Errorf("node: members do not include node %d", cfg.NodeID)
	}
	if cfg.ShardCount <= 0 || cfg.ShardCount > 1024 {
		return nil, fmt.Errorf("node: shard count %d out of range 1-1024", cfg.ShardCount)
	}
	if cfg.CoordinatorCount < 0 || cfg.CoordinatorCount > 64 {
		return nil, fmt.Errorf("node: coordinator count %d out of range 0-64", cfg.CoordinatorCount)
	}
	if cfg.RTTMillisecond == 0 {
		cfg.RTTMillisecond = 50
	}
	if cfg.ElectionRTT == 0 {
		cfg.ElectionRTT = 10
	}
	if cfg.BlockCacheBytes == 0 {
		cfg.BlockCacheBytes = BlockCacheBytesDefault
	}
	if cfg.BlockCacheBytes < BlockCacheBytesMin || cfg.BlockCacheBytes > BlockCacheBytesMax {
		return nil, fmt.Errorf("node: block cache %d bytes out of range %d-%d", cfg.BlockCacheBytes, BlockCacheBytesMin, BlockCacheBytesMax)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	raftDir := filepath.Join(cfg.DataDir, "raft")
	smDir := filepath.Join(cfg.DataDir, "sm")
	for _, d := range []string{raftDir, smDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("node: create %s: %w", d, err)
		}
	}
	shards, err := EngineShards(raftDir)
	if err != nil {
		return nil, err
	}
	nhc := NodeHostConfig(raftDir, cfg.RaftAddress, cfg.RTTMillisecond, shards)
	nhc.Expert.TransportFactory = cfg.TransportFactory
	nh, err := dragonboat.NewNodeHost(nhc)
	if err != nil {
		return nil, fmt.Errorf("node %d: new nodehost: %w", cfg.NodeID, err)
	}
	n := &Node{cfg: cfg, nh: nh, log: cfg.Logger.With("node", cfg.NodeID), blocks: kvstore.NewCache(cfg.BlockCacheBytes)}
	if err := n.startReplicas(smDir); err != nil {
		nh.Close()
		n.blocks.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) groupConfig(shardID uint64) config.Config {
	return GroupConfig(shardID, n.cfg.NodeID, n.cfg.ElectionRTT)
}

// Block cache limits of a node (Config.BlockCacheBytes). One cache serves every store
// of the node, so a group's share follows its reads (each store had 32 MiB of its own
// before). The default holds the blocks of 10 million accounts (4 shards: 370 MB of
// sstables per node); pebble allocates it as blocks are cached. With 10 million
// accounts an account read that misses the cache costs a pread and a decompression
// (half of all CPU in a profile of a cold run).
const (
	BlockCacheBytesDefault int64 = 1 << 30
	BlockCacheBytesMin     int64 = 8 << 20
	BlockCacheBytesMax     int64 = 64 << 30
)

// EngineShardsDefault is the number of raft step workers, and of LogDB shards, of a new
// NodeHost. With one, every group a worker pass touches saves its raft state and entries
// in one LogDB write batch, one fsync for all of them; with two (before 2026-12-02) the
// groups were split over two LogDBs, two fsyncs. Measured on the dev cluster (3 rounds,
// medians): cross-shard, 1 transfer per request, 64 clients 1,457 -> 1,621 transfers/s;
// at 500/s offered, p50 20.8 -> 14.7 ms and p99 52.2 -> 37.1 ms; batched rows unchanged.
const EngineShardsDefault uint64 = 1

// engineShardsLegacy is what a raft directory holds when it has no record: the count
// every NodeHost used before the record existed.
const engineShardsLegacy uint64 = 2

// engineShardsFile records, in a NodeHost's raft directory, the engine shard count it
// was created with: dragonboat refuses to open its data with any other
// (ErrHardSettingsChanged).
const engineShardsFile = "engine-shards"

// EngineShards returns the engine shard count for the NodeHost whose data lives in
// raftDir, recording it on first use: what the directory recorded; for a directory with
// raft data and no record, the count of the version that made it; for a new one,
// EngineShardsDefault.
func EngineShards(raftDir string) (uint64, error) {
	p := filepath.Join(raftDir, engineShardsFile)
	b, err := os.ReadFile(p)
	if err == nil {
		n, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if perr != nil || n == 0 || n > 64 {
			return 0, fmt.Errorf("node: %s holds %q, want an engine shard count 1-64", p, b)
		}
		return n, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("node: read %s: %w", p, err)
	}
	ents, err := os.ReadDir(raftDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("node: read %s: %w", raftDir, err)
	}
	n := EngineShardsDefault
	if len(ents) > 0 {
		n = engineShardsLegacy
	}
	if err := os.MkdirAll(raftDir, 0o750); err != nil {
		return 0, fmt.Errorf("node: create %s: %w", raftDir, err)
	}
	if err := os.WriteFile(p, []byte(strconv.FormatUint(n, 10)+"\n"), 0o640); err != nil {
		return 0, fmt.Errorf("node: record engine shards: %w", err)
	}
	return n, nil
}

// logDBTargetFileBytes is the LogDB's sstable size in L0 (twice that in L1, and so on;
// dragonboat's default is 16 MiB). Raft log keys are (group, index): every group appends
// at the end of its own range, and the groups' ranges interleave in each flushed L0
// file. An L0 compaction rewrites every L1 file that a group's new tail overlaps; with
// 32 MiB L1 files that was all of L1 (a few files covered every group), with 4 MiB
// files it is about one file per group. Measured (2 cores, alternated): the engine
// ceiling at 1,000 proposals per request 181,456 / 178,195 -> 314,521 / 327,188
// proposals/s, CPU per 1,000 0.0073 -> 0.0048 s; the dev cluster, 100 % cross-shard,
// 1,000 transfers per request: pebble compactions 20 % -> 13 % of ledgerd's CPU (20 s
// profiles), transfers/s 10,701 -> 11,121 (means of 7 rounds, within the noise).
const logDBTargetFileBytes = 2 << 20

// NodeHostConfig is the NodeHost configuration of every node (the benchmark's engine
// ceiling uses it too, so both run on the same settings): a small-memory LogDB, with
// engineShards step workers and LogDB shards (see EngineShards) and 2 workers for each
// other engine stage, sized for 2-core machines.
func NodeHostConfig(raftDir, raftAddress string, rttMillisecond, engineShards uint64) config.NodeHostConfig {
	logdb := config.GetTinyMemLogDBConfig()
	logdb.Shards = engineShards
	logdb.KVTargetFileSizeBase = logDBTargetFileBytes
	return config.NodeHostConfig{
		NodeHostDir:    raftDir,
		WALDir:         raftDir,
		RTTMillisecond: rttMillisecond,
		RaftAddress:    raftAddress,
		Expert: config.ExpertConfig{
			LogDB: logdb,
			Engine: config.EngineConfig{ExecShards: engineShards, CommitShards: 2, ApplyShards: 2,
				SnapshotShards: 2, CloseShards: 2},
		},
	}
}

// GroupConfig is the raft configuration of every group replica.
func GroupConfig(shardID, replicaID, electionRTT uint64) config.Config {
	return config.Config{
		ShardID:            shardID,
		ReplicaID:          replicaID,
		ElectionRTT:        electionRTT,
		HeartbeatRTT:       1,
		CheckQuorum:        true,
		PreVote:            true,
		SnapshotEntries:    10_000,
		CompactionOverhead: 5_000,
		MaxInMemLogSize:    256 << 20,
	}
}

func (n *Node) startReplicas(smDir string) error {
	members := n.cfg.Members
	if n.nh.HasNodeInfo(MetaShardID, n.cfg.NodeID) {
		members = nil // restart: dragonboat recorded the membership
	}
	if err := n.nh.StartReplica(members, false, meta.NewStateMachine, n.groupConfig(MetaShardID)); err != nil {
		return fmt.Errorf("node %d: start meta replica: %w", n.cfg.NodeID, err)
	}
	factory := ondisk.Factory(smDir, n.blocks)
	for _, id := range n.ShardIDs() {
		m := n.cfg.Members
		if n.nh.HasNodeInfo(id, n.cfg.NodeID) {
			m = nil
		}
		if err := n.nh.StartOnDiskReplica(m, false, factory, n.groupConfig(id)); err != nil {
			return fmt.Errorf("node %d: start shard %d: %w", n.cfg.NodeID, id, err)
		}
	}
	cf := coordinator.Factory(smDir, coordinator.NewCore(n.cfg.OnCoordinatorApplied), n.blocks)
	for _, id := range n.CoordinatorGroups() {
		m := n.cfg.Members
		if n.nh.HasNodeInfo(id, n.cfg.NodeID) {
			m = nil
		}
		if err := n.nh.StartOnDiskReplica(m, false, cf, n.groupConfig(id)); err != nil {
			return fmt.Errorf("node %d: start coordinator group %d: %w", n.cfg.NodeID, id, err)
		}
	}
	return nil
}

// CoordinatorGroups lists the coordinator groups' raft ids.
func (n *Node) CoordinatorGroups() []uint64 {
	ids := make([]uint64, n.cfg.CoordinatorCount)
	for i := range ids {
		ids[i] = meta.CoordinatorGroupBase + uint64(i)
	}
	return ids
}

// Leads tells whether the local replica of a group is its leader.
func (n *Node) Leads(group uint64) bool {
	l, _, ok := n.Leader(group)
	return ok && l == n.cfg.NodeID
}

// ID is the node id.
func (n *Node) ID() uint64 { return n.cfg.NodeID }

// RaftAddress is the node's raft address.
func (n *Node) RaftAddress() string { return n.cfg.RaftAddress }

// Zone is the node's placement label.
func (n *Node) Zone() string { return n.cfg.Zone }

// ShardIDs lists the account shards (1..ShardCount).
func (n *Node) ShardIDs() []uint64 {
	ids := make([]uint64, n.cfg.ShardCount)
	for i := range ids {
		ids[i] = uint64(i + 1)
	}
	return ids
}

// Members returns the cluster members sorted by id.
func (n *Node) Members() []uint64 {
	ids := make([]uint64, 0, len(n.cfg.Members))
	for id := range n.cfg.Members {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// MemberAddress returns a member's raft address.
func (n *Node) MemberAddress(id uint64) string { return n.cfg.Members[id] }

// Propose replicates cmd in a group and returns its result once applied here.
func (n *Node) Propose(ctx context.Context, shardID uint64, cmd []byte) (sm.Result, error) {
	return n.nh.SyncPropose(ctx, n.nh.GetNoOPSession(shardID), cmd)
}

// Read runs a query: linearizable through ReadIndex, or from the local replica when stale.
func (n *Node) Read(ctx context.Context, shardID uint64, q interface{}, stale bool) (interface{}, error) {
	if stale {
		return n.nh.StaleRead(shardID, q)
	}
	return n.nh.SyncRead(ctx, shardID, q)
}

// Leader returns the group's leader as this node knows it.
func (n *Node) Leader(shardID uint64) (leader, term uint64, ok bool) {
	l, t, valid, err := n.nh.GetLeaderID(shardID)
	return l, t, valid && err == nil
}

// Close stops every replica and the NodeHost.
func (n *Node) Close() {
	n.nh.Close()
	n.blocks.Close() // after the stores: each holds its own reference until closed
}

// StorageMetrics reports the node's block cache and every state machine store open
// with it (pebble's levels, compactions, flushes).
func (n *Node) StorageMetrics() (kvstore.CacheMetrics, []kvstore.StoreMetrics) {
	return n.blocks.Metrics()
}

// NodeHost exposes the NodeHost for tests and tools.
func (n *Node) NodeHost() *dragonboat.NodeHost { return n.nh }

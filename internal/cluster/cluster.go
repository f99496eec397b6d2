// Package cluster starts a whole cluster in one process: several nodes (NodeHosts) on
// loopback and a router over them. `ledgerd dev` and the cluster tests use it.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/config"
	sm "github.com/lni/dragonboat/v4/statemachine"

	"github.com/shardledger/shardledger/coordinator"
	"github.com/shardledger/shardledger/internal/node"
	"github.com/shardledger/shardledger/meta"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	"github.com/shardledger/shardledger/router"
)

// Config describes a local cluster.
type Config struct {
	// Dir holds node-<id> directories; a restart with the same Dir finds all data again.
	Dir string
	// RaftAddresses, one per node (node ids are 1..len).
	RaftAddresses []string
	ShardCount    int
	SlotCount     uint32
	// CoordinatorCount coordinator groups (default 1).
	CoordinatorCount int
	RTTMillisecond   uint64
	// ElectionRTT in RTTs (default: node's default).
	ElectionRTT uint64
	// BlockCacheBytes is each node's block cache (default: node's default).
	BlockCacheBytes int64
	// TransportFactory replaces the TCP transport (tests use internal/faultnet).
	TransportFactory config.TransportFactory
	Router           router.Options
	// Agents configures drivers and resolvers; AgentsFor, when set, overrides it per node
	// (tests hook a driver on one node).
	Agents    AgentOptions
	AgentsFor func(nodeID uint64) AgentOptions
	Logger    *slog.Logger
}

// Local is a running in-process cluster.
type Local struct {
	cfg      Config
	backends []*Backend
	Router   *router.Router
}

// Backend is a node slot whose node can be stopped and restarted under the router.
type Backend struct {
	id    uint64
	mu    sync.RWMutex
	n     *node.Node
	hub   *coordinator.Hub
	agent func() // stops the node's drivers and resolver
}

var _ router.Backend = (*Backend)(nil)

func (b *Backend) get() (*node.Node, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.n == nil {
		return nil, dragonboat.ErrClosed
	}
	return b.n, nil
}

// ID is the node id.
func (b *Backend) ID() uint64 { return b.id }

// Propose implements router.Backend.
func (b *Backend) Propose(ctx context.Context, shardID uint64, cmd []byte) (sm.Result, error) {
	n, err := b.get()
	if err != nil {
		return sm.Result{}, err
	}
	return n.Propose(ctx, shardID, cmd)
}

// Read implements router.Backend.
func (b *Backend) Read(ctx context.Context, shardID uint64, q interface{}, stale bool) (interface{}, error) {
	n, err := b.get()
	if err != nil {
		return nil, err
	}
	return n.Read(ctx, shardID, q, stale)
}

// Leader implements router.Backend.
func (b *Backend) Leader(shardID uint64) (uint64, uint64, bool) {
	n, err := b.get()
	if err != nil {
		return 0, 0, false
	}
	return n.Leader(shardID)
}

// Node returns the running node (nil when stopped).
func (b *Backend) Node() *node.Node {
	n, _ := b.get()
	return n
}

func (l *Local) nodeConfig(i int) node.Config {
	members := map[uint64]string{}
	for j, a := range l.cfg.RaftAddresses {
		members[uint64(j+1)] = a
	}
	id := uint64(i + 1)
	return node.Config{
		NodeID: id, RaftAddress: l.cfg.RaftAddresses[i], Zone: fmt.Sprintf("zone-%d", id),
		DataDir: filepath.Join(l.cfg.Dir, fmt.Sprintf("node-%d", id)), Members: members,
		ShardCount: l.cfg.ShardCount, CoordinatorCount: l.cfg.CoordinatorCount,
		RTTMillisecond: l.cfg.RTTMillisecond, ElectionRTT: l.cfg.ElectionRTT, BlockCacheBytes: l.cfg.BlockCacheBytes,
		TransportFactory: l.cfg.TransportFactory, Logger: l.cfg.Logger,
	}
}

// Start starts every node and the router, and bootstraps the shard map.
func Start(ctx context.Context, cfg Config) (*Local, error) {
	if len(cfg.RaftAddresses) == 0 {
		return nil, errors.New("cluster: no raft address")
	}
	if cfg.SlotCount == 0 {
		cfg.SlotCount = 4096
	}
	if cfg.ShardCount == 0 {
		cfg.ShardCount = 4
	}
	if cfg.CoordinatorCount == 0 {
		cfg.CoordinatorCount = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Router.Logger = cfg.Logger
	l := &Local{cfg: cfg}
	var rb []router.Backend
	for i := range cfg.RaftAddresses {
		b := &Backend{id: uint64(i + 1)}
		l.backends = append(l.backends, b)
		rb = append(rb, b)
	}
	for i := range cfg.RaftAddresses {
		if err := l.StartNode(i); err != nil {
			l.Close()
			return nil, err
		}
	}
	r, err := router.New(rb, cfg.Router)
	if err != nil {
		l.Close()
		return nil, err
	}
	l.Router = r
	if err := r.Bootstrap(ctx, l.InitialMap()); err != nil {
		l.Close()
		return nil, err
	}
	for _, b := range l.backends {
		l.startAgents(b)
	}
	return l, nil
}

// InitialMap is the map the cluster bootstraps with.
func (l *Local) InitialMap() *raftv1.ShardMap {
	var nodes []*raftv1.NodeInfo
	for i := range l.cfg.RaftAddresses {
		c := l.nodeConfig(i)
		nodes = append(nodes, &raftv1.NodeInfo{Id: c.NodeID, RaftAddress: c.RaftAddress, Zone: c.Zone})
	}
	return meta.Initial(l.cfg.SlotCount, l.cfg.ShardCount, l.cfg.CoordinatorCount, nodes)
}

// StartNode starts (or restarts) node i (0-based).
func (l *Local) StartNode(i int) error {
	b := l.backends[i]
	b.mu.Lock()
	if b.n != nil {
		b.mu.Unlock()
		return fmt.Errorf("cluster: node %d is running", i+1)
	}
	b.hub = coordinator.NewHub()
	cfg := l.nodeConfig(i)
	cfg.OnCoordinatorApplied = b.hub.Notify
	n, err := node.Start(cfg)
	if err != nil {
		b.mu.Unlock()
		return err
	}
	b.n = n
	b.mu.Unlock()
	if l.Router != nil { // a restart: the router exists
		l.startAgents(b)
	}
	return nil
}

func (l *Local) startAgents(b *Backend) {
	opts := l.cfg.Agents
	if l.cfg.AgentsFor != nil {
		opts = l.cfg.AgentsFor(b.id)
	}
	if opts.Driver.Logger == nil {
		opts.Driver.Logger = l.cfg.Logger
	}
	if opts.Resolver.Logger == nil {
		opts.Resolver.Logger = l.cfg.Logger
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n != nil && b.agent == nil {
		b.agent = StartAgents(b.n, b.hub, l.Router.Background(), l.Router.CoordinatorGroupOf, opts)
	}
}

// StopNode stops node i (0-based): its NodeHost closes, as if the process died (the
// state machines' unsynced writes are replayed from the raft log on restart).
func (l *Local) StopNode(i int) {
	b := l.backends[i]
	b.mu.Lock()
	n, stop := b.n, b.agent
	b.n, b.agent = nil, nil
	b.mu.Unlock()
	if stop != nil {
		stop() // the node's drivers end where they are, as if the process died
	}
	if n != nil {
		n.Close()
	}
}

// Backends returns the node slots.
func (l *Local) Backends() []*Backend { return l.backends }

// Close stops the router and every node.
func (l *Local) Close() {
	if l.Router != nil {
		l.Router.Close()
	}
	for i := range l.backends {
		l.StopNode(i)
	}
}

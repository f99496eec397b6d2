// Package faultnet is an in-process raft transport for tests that can drop traffic
// between chosen NodeHosts: partitions, isolated nodes, healing. It wraps dragonboat's
// channel transport (plugin/chan), keyed by raft address.
package faultnet

import (
	"context"
	"errors"
	"sync"

	"github.com/lni/dragonboat/v4/config"
	transport "github.com/lni/dragonboat/v4/plugin/chan"
	"github.com/lni/dragonboat/v4/raftio"
	pb "github.com/lni/dragonboat/v4/raftpb"
)

// ErrDropped is returned for snapshot chunks sent across a cut link.
var ErrDropped = errors.New("faultnet: link is cut")

// Net decides which links deliver.
type Net struct {
	mu      sync.RWMutex
	blocked map[[2]string]bool // from -> to
}

// New returns a network with every link up.
func New() *Net { return &Net{blocked: map[[2]string]bool{}} }

// Cut drops traffic both ways between a and each of others.
func (n *Net) Cut(a string, others ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, b := range others {
		n.blocked[[2]string{a, b}] = true
		n.blocked[[2]string{b, a}] = true
	}
}

// Heal restores every link.
func (n *Net) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.blocked)
}

func (n *Net) up(from, to string) bool {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return !n.blocked[[2]string{from, to}]
}

// Factory returns the transport factory for NodeHosts on this network.
func (n *Net) Factory() config.TransportFactory { return factory{n: n} }

type factory struct{ n *Net }

func (f factory) Create(cfg config.NodeHostConfig, h raftio.MessageHandler, ch raftio.ChunkHandler) raftio.ITransport {
	return &netTransport{ITransport: transport.NewChanTransport(cfg, h, ch), n: f.n, from: cfg.RaftAddress}
}

func (factory) Validate(addr string) bool { return addr != "" }

type netTransport struct {
	raftio.ITransport
	n    *Net
	from string
}

func (t *netTransport) GetConnection(ctx context.Context, target string) (raftio.IConnection, error) {
	c, err := t.ITransport.GetConnection(ctx, target)
	if err != nil {
		return nil, err
	}
	return &conn{IConnection: c, t: t, to: target}, nil
}

func (t *netTransport) GetSnapshotConnection(ctx context.Context, target string) (raftio.ISnapshotConnection, error) {
	c, err := t.ITransport.GetSnapshotConnection(ctx, target)
	if err != nil {
		return nil, err
	}
	return &snapConn{ISnapshotConnection: c, t: t, to: target}, nil
}

type conn struct {
	raftio.IConnection
	t  *netTransport
	to string
}

func (c *conn) SendMessageBatch(b pb.MessageBatch) error {
	if !c.t.n.up(c.t.from, c.to) {
		return nil // lost on the wire
	}
	return c.IConnection.SendMessageBatch(b)
}

type snapConn struct {
	raftio.ISnapshotConnection
	t  *netTransport
	to string
}

func (c *snapConn) SendChunk(ch pb.Chunk) error {
	if !c.t.n.up(c.t.from, c.to) {
		return ErrDropped
	}
	return c.ISnapshotConnection.SendChunk(ch)
}

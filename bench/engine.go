package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/config"
	sm "github.com/lni/dragonboat/v4/statemachine"

	"github.com/shardledger/shardledger/internal/node"
	"github.com/shardledger/shardledger/internal/wire"
	"github.com/shardledger/shardledger/ledger/ondisk"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
	"github.com/shardledger/shardledger/router"
)

// EngineOptions describe the engine ceiling baseline.
type EngineOptions struct {
	// Groups is the number of raft groups (ids 1..Groups; default 4).
	Groups int
	// RTTMillisecond is the round trip dragonboat assumes (default 50, as internal/node).
	RTTMillisecond uint64
	// ElectionRTT in RTTs (default 10, as internal/node).
	ElectionRTT uint64
	// Dir holds the NodeHosts' data; empty: a temp dir, removed on Close.
	Dir string
	// Router bounds the router in front of the groups (defaults as the ledger's).
	Router router.Options
}

// Engine is the consensus engine's ceiling: three dragonboat NodeHosts in this process,
// configured exactly as the ledger's nodes, hosting groups whose state machine does
// nothing but answer the router, behind the same router (batching, in-flight bounds)
// as the ledger. What the ledger adds on top of this is its own cost.
type Engine struct {
	opts   EngineOptions
	dir    string
	rmDir  bool
	nhs    []*dragonboat.NodeHost
	router *router.Router
	pop    *Population

	mu  sync.Mutex
	sms map[uint64][]*nullSM // per group, one per replica

	procsPrev int // GOMAXPROCS before StartEngine (0: unchanged)
}

var _ Target = (*Engine)(nil)

// engineReplicas is the replica count of every group (one per NodeHost).
const engineReplicas = 3

// StartEngine starts the NodeHosts and groups, waits for every group's leader (30 s at
// most) and builds the router.
func StartEngine(ctx context.Context, opts EngineOptions) (*Engine, error) {
	if opts.Groups == 0 {
		opts.Groups = 4
	}
	if opts.Groups < 0 || opts.Groups > 1024 {
		return nil, fmt.Errorf("engine: group count %d out of range 1-1024", opts.Groups)
	}
	// The defaults of internal/node.
	if opts.RTTMillisecond == 0 {
		opts.RTTMillisecond = 50
	}
	if opts.ElectionRTT == 0 {
		opts.ElectionRTT = 10
	}
	node.QuietDragonboat()
	e := &Engine{opts: opts, dir: opts.Dir, sms: map[uint64][]*nullSM{}}
	// The NodeHosts run in this process: give it the Go processors a ledger node runs
	// with (node.SetProcs), restored by Close.
	if procs, prev := node.SetProcs(); procs != prev {
		e.procsPrev = prev
	}
	if e.dir == "" {
		d, err := os.MkdirTemp("", "shardledger-engine-")
		if err != nil {
			return nil, fmt.Errorf("engine: temp dir: %w", err)
		}
		e.dir, e.rmDir = d, true
	}
	if err := e.start(ctx); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func freePorts(n int) ([]string, error) {
	addrs := make([]string, n)
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("engine: free port: %w", err)
		}
		lns = append(lns, ln)
		addrs[i] = ln.Addr().String()
	}
	return addrs, nil
}

func (e *Engine) start(ctx context.Context) error {
	addrs, err := freePorts(engineReplicas)
	if err != nil {
		return err
	}
	members := map[uint64]string{}
	for i, a := range addrs {
		members[uint64(i+1)] = a
	}
	for i, addr := range addrs {
		replica := uint64(i + 1)
		raftDir := filepath.Join(e.dir, fmt.Sprintf("node-%d", replica), "raft")
		if err := os.MkdirAll(raftDir, 0o750); err != nil {
			return fmt.Errorf("engine: create %s: %w", raftDir, err)
		}
		// The NodeHost settings of internal/node.Start.
		shards, err := node.EngineShards(raftDir)
		if err != nil {
			return fmt.Errorf("engine: node %d: %w", replica, err)
		}
		nhc := node.NodeHostConfig(raftDir, addr, e.opts.RTTMillisecond, shards)
		nh, err := dragonboat.NewNodeHost(nhc)
		if err != nil {
			return fmt.Errorf("engine: node %d: new nodehost: %w", replica, err)
		}
		e.nhs = append(e.nhs, nh)
		for g := uint64(1); g <= uint64(e.opts.Groups); g++ {
			if err := nh.StartReplica(members, false, e.newSM, e.groupConfig(g, replica)); err != nil {
				return fmt.Errorf("engine: node %d: start group %d: %w", replica, g, err)
			}
		}
	}
	if err := e.waitLeaders(ctx, 30*time.Second); err != nil {
		return err
	}
	backends := make([]router.Backend, len(e.nhs))
	for i, nh := range e.nhs {
		backends[i] = engineBackend{id: uint64(i + 1), nh: nh}
	}
	r, err := router.New(backends, e.opts.Router)
	if err != nil {
		return err
	}
	e.router = r
	return nil
}

// groupConfig is internal/node's group configuration.
func (e *Engine) groupConfig(group, replica uint64) config.Config {
	return node.GroupConfig(group, replica, e.opts.ElectionRTT)
}

func (e *Engine) newSM(group, replica uint64) sm.IStateMachine {
	m := &nullSM{replica: replica}
	e.mu.Lock()
	e.sms[group] = append(e.sms[group], m)
	e.mu.Unlock()
	return m
}

func (e *Engine) waitLeaders(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		missing := uint64(0)
		for g := uint64(1); g <= uint64(e.opts.Groups) && missing == 0; g++ {
			if _, _, ok, err := e.nhs[0].GetLeaderID(g); err != nil || !ok {
				missing = g
			}
		}
		if missing == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("engine: group %d has no leader: %w", missing, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Name implements Target.
func (e *Engine) Name() string { return "engine" }

// Setup implements Target: the engine has no accounts, it only remembers where the
// population's accounts live.
func (e *Engine) Setup(_ context.Context, p *Population) error {
	e.pop = p
	return nil
}

// Group returns the engine group of a population shard.
func (e *Engine) Group(shard uint64) uint64 {
	if shard == 0 {
		shard = 1
	}
	return (shard-1)%uint64(e.opts.Groups) + 1
}

// Do implements Target: one CreateTransfers command per group touched (by the debit
// account's shard), carrying the same transfers the ledger would log, proposed through
// the router in parallel.
func (e *Engine) Do(ctx context.Context, batch []Transfer, _ *Recorder) error {
	p := e.pop
	if p == nil {
		return errors.New("engine: Setup was not called")
	}
	byGroup := map[uint64][]*ledgerv1.Transfer{}
	for _, t := range batch {
		g := e.Group(p.Shard[t.Debit])
		byGroup[g] = append(byGroup[g], &ledgerv1.Transfer{Id: t.ID, DebitAccountId: p.IDs[t.Debit],
			CreditAccountId: p.IDs[t.Credit], Amount: t.Amount, Currency: "USD"})
	}
	propose := func(g uint64, ts []*ledgerv1.Transfer) error {
		cmd := &raftv1.Command{Op: &raftv1.Command_CreateTransfers{CreateTransfers: &raftv1.CreateTransfers{Transfers: ts}}}
		_, err := e.router.Propose(ctx, g, cmd)
		return err
	}
	if len(byGroup) == 1 {
		for g, ts := range byGroup {
			return propose(g, ts)
		}
	}
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	for g, ts := range byGroup {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := propose(g, ts); err != nil {
				errMu.Lock()
				if first == nil {
					first = err
				}
				errMu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

// CPUSeconds implements Target: this process's user+system CPU time. In-process, that
// includes the load generator (and the test or tool around it), so it is an upper bound.
func (e *Engine) CPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// Applied returns the commands and transfers applied, summed over groups (per group,
// the most any replica has applied).
func (e *Engine) Applied() (commands, transfers int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ms := range e.sms {
		var c, t int64
		for _, m := range ms {
			c, t = max(c, m.commands.Load()), max(t, m.transfers.Load())
		}
		commands, transfers = commands+c, transfers+t
	}
	return commands, transfers
}

// Close implements Target: stops the router and the NodeHosts and removes a temp dir.
func (e *Engine) Close() error {
	if e.router != nil {
		e.router.Close()
	}
	for _, nh := range e.nhs {
		nh.Close()
	}
	e.nhs = nil
	if e.procsPrev != 0 {
		runtime.GOMAXPROCS(e.procsPrev)
		e.procsPrev = 0
	}
	if e.rmDir {
		e.rmDir = false
		return os.RemoveAll(e.dir)
	}
	return nil
}

// engineBackend is a NodeHost as the router sees a ledger node.
type engineBackend struct {
	id uint64
	nh *dragonboat.NodeHost
}

func (b engineBackend) ID() uint64 { return b.id }

func (b engineBackend) Propose(ctx context.Context, group uint64, cmd []byte) (sm.Result, error) {
	return b.nh.SyncPropose(ctx, b.nh.GetNoOPSession(group), cmd)
}

func (b engineBackend) Read(ctx context.Context, group uint64, q interface{}, stale bool) (interface{}, error) {
	if stale {
		return b.nh.StaleRead(group, q)
	}
	return b.nh.SyncRead(ctx, group, q)
}

func (b engineBackend) Leader(group uint64) (uint64, uint64, bool) {
	l, t, valid, err := b.nh.GetLeaderID(group)
	return l, t, valid && err == nil
}

// nullSM is the trivial state machine: it keeps nothing but counters. Update decodes the
// entry as a raftv1.Batch and answers a BatchResult of empty CommandResults, one per
// command: that decode/encode is the minimum the router needs (it checks Value ==
// ondisk.ResultApplied and one result per command), so it is part of the ceiling too.
// Like the ledger's replicas, only the one the proposer waits on encodes the results
// (Batch.result_replica_id).
type nullSM struct {
	replica   uint64
	commands  atomic.Int64
	transfers atomic.Int64
}

func (m *nullSM) Update(ent sm.Entry) (sm.Result, error) {
	var b raftv1.Batch
	if err := wire.Unmarshal(ent.Cmd, &b); err != nil {
		// An error from Update stops the NodeHost: answer a result the router refuses.
		return sm.Result{Value: 0}, nil
	}
	var transfers int64
	for _, c := range b.Commands {
		transfers += int64(len(c.GetCreateTransfers().GetTransfers()))
	}
	var data []byte
	if r := b.GetResultReplicaId(); r == 0 || r == m.replica {
		out := &raftv1.BatchResult{Results: make([]*raftv1.CommandResult, len(b.Commands))}
		for i := range out.Results {
			out.Results[i] = &raftv1.CommandResult{}
		}
		var err error
		if data, err = wire.Marshal(out); err != nil {
			return sm.Result{Value: 0}, nil
		}
	}
	m.commands.Add(int64(len(b.Commands)))
	m.transfers.Add(transfers)
	return sm.Result{Value: ondisk.ResultApplied, Data: data}, nil
}

func (m *nullSM) Lookup(interface{}) (interface{}, error) {
	c, t := m.commands.Load(), m.transfers.Load()
	return [2]int64{c, t}, nil
}

func (m *nullSM) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	var buf [16]byte
	binary.BigEndian.PutUint64(buf[:8], uint64(m.commands.Load()))
	binary.BigEndian.PutUint64(buf[8:], uint64(m.transfers.Load()))
	_, err := w.Write(buf[:])
	return err
}

func (m *nullSM) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	var buf [16]byte
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return err
	}
	m.commands.Store(int64(binary.BigEndian.Uint64(buf[:8])))
	m.transfers.Store(int64(binary.BigEndian.Uint64(buf[8:])))
	return nil
}

func (m *nullSM) Close() error { return nil }

// Command ledgerd runs Shardledger nodes.
//
//	ledgerd dev    a whole 3-node cluster and the router in one process (no credentials)
//	ledgerd start  one node of a multi-process cluster, optionally serving the public API
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/shardledger/shardledger/coordinator"
	"github.com/shardledger/shardledger/internal/cluster"
	"github.com/shardledger/shardledger/internal/kvstore"
	"github.com/shardledger/shardledger/internal/node"
	"github.com/shardledger/shardledger/meta"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	"github.com/shardledger/shardledger/router"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if os.Args[1] == "dev" || os.Args[1] == "start" {
		procs, def := node.SetProcs()
		log.Info("go processors", "gomaxprocs", procs, "runtime_default", def)
	}
	var err error
	switch os.Args[1] {
	case "dev":
		err = runDev(ctx, log, os.Args[2:])
	case "start":
		err = runStart(ctx, log, os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "ledgerd: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		log.Error("ledgerd failed", "err", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  ledgerd dev   [--data-dir ./data/dev] [--listen localhost:8080] [--raft-port-base 63001] [--shards 4]
                [--coordinators 1] [--block-cache-mb 1024] [--pprof ADDR]
  ledgerd start --node-id N --raft-addr HOST:PORT --members 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT
                --data-dir DIR [--listen HOST:PORT] [--shards 4] [--slots 4096] [--zone Z]
                [--block-cache-mb 1024]
`)
}

// devCoordinators is the dev cluster's number of coordinator groups.
const devCoordinators = 1

func runDev(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("dev", flag.ExitOnError)
	dataDir := fs.String("data-dir", "./data/dev", "where the cluster keeps its data")
	listen := fs.String("listen", "localhost:8080", "public API address")
	portBase := fs.Int("raft-port-base", 63001, "raft ports of the three nodes start here (loopback)")
	shards := fs.Int("shards", 4, "account shards (fixed when the data dir is created)")
	coords := fs.Int("coordinators", devCoordinators, "coordinator groups (fixed when the data dir is created)")
	pprofAddr := fs.String("pprof", "", "serve the Go profiler (/debug/pprof/) and the storage report (/debug/storage) on this address (debugging)")
	cacheMB := fs.Int64("block-cache-mb", node.BlockCacheBytesDefault>>20, "block cache of each node, shared by its stores (MiB)")
	_ = fs.Parse(args)
	node.QuietDragonboat()

	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", *portBase+i)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	log.Info("starting dev cluster", "data_dir", *dataDir, "nodes", 3, "shards", *shards)
	bctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := cluster.Start(bctx, cluster.Config{Dir: *dataDir, RaftAddresses: addrs, ShardCount: *shards,
		CoordinatorCount: *coords, SlotCount: 4096, RTTMillisecond: 20,
		// Elections after 500 ms of silence: three nodes share this process's CPUs, and a
		// saturated machine must not mistake a busy leader for a dead one.
		ElectionRTT: 25, BlockCacheBytes: *cacheMB << 20, Logger: log})
	if err != nil {
		ln.Close()
		return fmt.Errorf("start dev cluster: %w", err)
	}
	defer c.Close()
	serveDebug(log, *pprofAddr, func() []*node.Node {
		var ns []*node.Node
		for _, b := range c.Backends() {
			if n := b.Node(); n != nil {
				ns = append(ns, n)
			}
		}
		return ns
	})
	return serve(ctx, log, ln, c.Router, fmt.Sprintf(`
Shardledger dev cluster: 3 nodes, %d account shards, data in %s
Public API (Connect, gRPC, gRPC-Web) on http://%s
Try:
  curl -s http://%[3]s/ledger.v1.LedgerService/CreateAccounts -H 'Content-Type: application/json' \
    -d '{"accounts":[{"id":"alice","currency":"USD"},{"id":"bob","currency":"USD"}]}'
  curl -s http://%[3]s/ledger.v1.LedgerService/CreateTransfers -H 'Content-Type: application/json' \
    -d '{"transfers":[{"id":"t1","debitAccountId":"alice","creditAccountId":"bob","amount":"100","currency":"USD"}]}'
  curl -s http://%[3]s/ledger.v1.LedgerService/GetAccounts -H 'Content-Type: application/json' -d '{"ids":["alice","bob"]}'
`, *shards, *dataDir, ln.Addr().String()))
}

// serveDebug serves, on its own address when asked to, the Go profiler
// (/debug/pprof/) and the nodes' storage report (/debug/storage: writeStorage).
func serveDebug(log *slog.Logger, addr string, nodes func() []*node.Node) {
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/storage", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, n := range nodes() {
			cm, ms := n.StorageMetrics()
			if err := writeStorage(w, n.ID(), cm, ms); err != nil {
				log.Debug("storage report", "err", err)
				return
			}
		}
	})
	go func() {
		srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		log.Info("debug server", "addr", addr, "err", srv.ListenAndServe())
	}()
}

// writeStorage writes one node's storage report: its block cache, then a line per state
// machine store (sizes in MiB; compactions, flushes and their bytes since the store
// opened).
func writeStorage(w io.Writer, nodeID uint64, cm kvstore.CacheMetrics, ms []kvstore.StoreMetrics) error {
	const mib = 1 << 20
	hitPct := 0.0
	if cm.Hits+cm.Misses > 0 {
		hitPct = 100 * float64(cm.Hits) / float64(cm.Hits+cm.Misses)
	}
	if _, err := fmt.Fprintf(w, "node %d: block cache %d MiB, %d hits, %d misses (%.1f %% hits)\n",
		nodeID, cm.SizeBytes/mib, cm.Hits, cm.Misses, hitPct); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "store\tl0_sublevels\tl0_files\tfiles\tsize_mib\tdebt_mib\tcompacting\tcompactions\tcompacted_mib\tflushes\tflushed_mib\tmemtable_mib\t")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", filepath.Base(m.Dir),
			m.L0Sublevels, m.L0Files, m.Files, m.SizeBytes/mib, m.CompactionDebtBytes/mib, m.CompactionsInFlight,
			m.Compactions, m.CompactedBytes/mib, m.Flushes, m.FlushedBytes/mib, m.MemtableBytes/mib)
	}
	return tw.Flush()
}

func serve(ctx context.Context, log *slog.Logger, ln net.Listener, r *router.Router, banner string) error {
	srv := router.Server(ln.Addr().String(), r.Handler())
	fmt.Print(banner) // before serving: whoever sees the API up can read it
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String())
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

func runStart(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("start", flag.ExitOnError)
	id := fs.Uint64("node-id", 0, "this node's id (1..N)")
	raftAddr := fs.String("raft-addr", "", "this node's raft address HOST:PORT")
	membersFlag := fs.String("members", "", "every node: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT")
	dataDir := fs.String("data-dir", "", "this node's data directory")
	listen := fs.String("listen", "", "serve the public API here (optional)")
	shards := fs.Int("shards", 4, "account shards (fixed at cluster creation)")
	coords := fs.Int("coordinators", 1, "coordinator groups (fixed at cluster creation)")
	slots := fs.Uint("slots", 4096, "hash slots (fixed at cluster creation)")
	zone := fs.String("zone", "", "placement label")
	rtt := fs.Uint64("rtt-ms", 50, "network round trip in ms")
	cacheMB := fs.Int64("block-cache-mb", node.BlockCacheBytesDefault>>20, "block cache shared by this node's stores (MiB)")
	_ = fs.Parse(args)
	node.QuietDragonboat()
	members, err := parseMembers(*membersFlag)
	if err != nil {
		return err
	}
	hub := coordinator.NewHub()
	n, err := node.Start(node.Config{NodeID: *id, RaftAddress: *raftAddr, Zone: *zone, DataDir: *dataDir,
		Members: members, ShardCount: *shards, CoordinatorCount: *coords, RTTMillisecond: *rtt, Logger: log,
		BlockCacheBytes: *cacheMB << 20, OnCoordinatorApplied: hub.Notify})
	if err != nil {
		return err
	}
	defer n.Close()
	log.Info("node started", "node", *id, "raft", *raftAddr)
	// The node's router proposes through the local replicas (dragonboat forwards to each
	// group's leader); the coordinator drivers and the resolver act through it.
	r, err := router.New([]router.Backend{n}, router.Options{Logger: log})
	if err != nil {
		return err
	}
	defer r.Close()
	var nodes []*raftv1.NodeInfo
	for _, mid := range n.Members() {
		nodes = append(nodes, &raftv1.NodeInfo{Id: mid, RaftAddress: members[mid]})
	}
	initial := meta.Initial(uint32(*slots), *shards, *coords, nodes)
	for {
		bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := r.Bootstrap(bctx, initial)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("bootstrap not done yet (waiting for a quorum)", "err", err)
	}
	stopAgents := cluster.StartAgents(n, hub, r.Background(), r.CoordinatorGroupOf, cluster.AgentOptions{
		Driver: coordinator.DriverOptions{Logger: log}, Resolver: coordinator.ResolverOptions{Logger: log}})
	defer stopAgents()
	if *listen == "" {
		<-ctx.Done()
		return nil
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	return serve(ctx, log, ln, r, fmt.Sprintf("Shardledger node %d serving the public API on %s\n", *id, ln.Addr()))
}

func parseMembers(s string) (map[uint64]string, error) {
	out := map[uint64]string{}
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		id, err := strconv.ParseUint(k, 10, 64)
		if !ok || err != nil || id == 0 || v == "" {
			return nil, fmt.Errorf("--members: %q is not ID=HOST:PORT", part)
		}
		out[id] = v
	}
	if len(out) == 0 {
		return nil, errors.New("--members is required")
	}
	return out, nil
}

// Command ledger-bench measures Shardledger's transfer throughput and latency through
// its public Connect API, side by side with the raw consensus engine and PostgreSQL.
//
//	ledger-bench run   one workload on one target (a started dev/multi cluster, a running
//	                   cluster at --addr, the engine ceiling, or PostgreSQL)
//	ledger-bench suite everything, one target at a time; writes RESULTS.md, results.json
//	                   and SVG charts
//	ledger-bench visibility
//	                   how long after its answer a transfer shows as posted (one client)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/shardledger/shardledger/bench"
	"github.com/shardledger/shardledger/internal/node"
	"github.com/shardledger/shardledger/ledger"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	node.QuietDragonboat()
	var err error
	switch os.Args[1] {
	case "run":
		err = runOne(ctx, os.Args[2:])
	case "suite":
		err = runSuite(ctx, os.Args[2:])
	case "visibility":
		err = runVisibility(ctx, os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledger-bench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  ledger-bench run   [--target dev|multi|engine|postgres] [--addr URL] [--ledgerd PATH]
                     [--accounts N] [--cross R] [--zipf S] [--batch N] [--concurrency N]
                     [--rate REQ/S] [--duration D] [--warmup D] [--json FILE]
  ledger-bench suite [--out DIR] [--quick] [--mode dev|multi] [--ledgerd PATH] [--accounts N]
                     [--big-accounts N] [--concurrency N] [--batch N] [--batch-concurrency N]
                     [--duration D] [--warmup D] [--repeats N] [--skip-postgres] [--skip-engine]
  ledger-bench visibility [--target dev|multi] [--addr URL] [--ledgerd PATH] [--transfers N]
                     [--cross=false] [--json FILE]
`)
}

// runVisibility measures, with one client and no other load, how long after its answer
// a transfer shows as posted on both of its accounts.
func runVisibility(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("visibility", flag.ExitOnError)
	target := fs.String("target", "dev", "dev or multi (start a ledger cluster); ignored with --addr")
	addr := fs.String("addr", "", "a running ledger's API address (e.g. http://localhost:8080)")
	bin := fs.String("ledgerd", "", "ledgerd binary (default: build ./cmd/ledgerd)")
	n := fs.Int("transfers", 300, "transfers, one at a time")
	cross := fs.Bool("cross", true, "cross-shard transfers (false: intra-shard)")
	jsonOut := fs.String("json", "", "write the result as JSON to this file")
	_ = fs.Parse(args)
	opts := bench.LedgerOptions{Addr: *addr}
	if *addr == "" {
		if *target != "dev" && *target != "multi" {
			return fmt.Errorf("unknown target %q", *target)
		}
		b, cleanup, err := ledgerd(ctx, *bin)
		if err != nil {
			return err
		}
		defer cleanup()
		opts = bench.LedgerOptions{Mode: *target, Binary: b}
	}
	l, err := bench.StartLedger(ctx, opts)
	if err != nil {
		return err
	}
	defer l.Close()
	res, err := l.Visibility(ctx, *n, *cross)
	if err != nil {
		return err
	}
	fmt.Print(res.Markdown())
	if *jsonOut != "" {
		return writeJSON(*jsonOut, res)
	}
	return nil
}

// writeJSON writes v, indented, to the file at path.
func writeJSON(path string, v any) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// ledgerd returns the binary to start: the flag's, or one built from this module.
func ledgerd(ctx context.Context, path string) (string, func(), error) {
	if path != "" {
		return path, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "ledger-bench-bin-*")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	mod, err := moduleDir()
	if err != nil {
		cleanup()
		return "", nil, err
	}
	fmt.Fprintln(os.Stderr, "building ledgerd ...")
	bin, err := bench.BuildLedgerd(ctx, mod, dir)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return bin, cleanup, nil
}

// moduleDir finds the module root from the working directory.
func moduleDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s: pass --ledgerd", dir)
		}
	}
}

func runOne(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	target := fs.String("target", "dev", "dev, multi (start a ledger cluster), engine, postgres; ignored with --addr")
	addr := fs.String("addr", "", "a running ledger's API address (e.g. http://localhost:8080)")
	bin := fs.String("ledgerd", "", "ledgerd binary (default: build ./cmd/ledgerd)")
	exists := fs.Bool("population-exists", false, "with --addr: the cluster already holds the accounts (an earlier run with the same --accounts created them); create none")
	w := bench.Workload{}
	fs.IntVar(&w.Accounts, "accounts", 10_000, "accounts (up to 10,000,000)")
	fs.Float64Var(&w.CrossRatio, "cross", 0, "cross-shard fraction 0-1")
	fs.Float64Var(&w.Zipf, "zipf", 0, "Zipf skew exponent (> 1; 0: uniform)")
	fs.IntVar(&w.Batch, "batch", 1, "transfers per request (1-8000)")
	fs.IntVar(&w.Concurrency, "concurrency", 64, "concurrent requests (closed loop) or outstanding cap (open loop)")
	fs.Float64Var(&w.Rate, "rate", 0, "open loop: requests per second (0: closed loop)")
	fs.DurationVar(&w.Duration, "duration", 20*time.Second, "measured duration")
	fs.DurationVar(&w.Warmup, "warmup", 3*time.Second, "warm-up")
	fs.Uint64Var(&w.Seed, "seed", 1, "workload seed")
	jsonOut := fs.String("json", "", "write the result as JSON to this file")
	_ = fs.Parse(args)
	if err := w.Validate(); err != nil {
		return err
	}
	var (
		t       bench.Target
		shardOf = func(string) uint64 { return 1 }
	)
	switch {
	case *addr != "":
		l, err := bench.StartLedger(ctx, bench.LedgerOptions{Addr: *addr, PopulationExists: *exists})
		if err != nil {
			return err
		}
		t, shardOf = l, l.ShardOf
	case *target == "dev" || *target == "multi":
		b, cleanup, err := ledgerd(ctx, *bin)
		if err != nil {
			return err
		}
		defer cleanup()
		l, err := bench.StartLedger(ctx, bench.LedgerOptions{Mode: *target, Binary: b})
		if err != nil {
			return err
		}
		t, shardOf = l, l.ShardOf
	case *target == "engine":
		e, err := bench.StartEngine(ctx, bench.EngineOptions{RTTMillisecond: 20})
		if err != nil {
			return err
		}
		t = e
		// Spread over the engine's groups as the ledger spreads accounts over its shards
		// (the hash slot of the id; the dev cluster's 4,096 slots over 4 shards).
		shardOf = func(id string) uint64 { return uint64(ledger.SlotOf(id, ledger.SlotCountDefault))%4 + 1 }
	case *target == "postgres":
		pg, err := bench.StartPostgres(ctx, bench.PostgresOptions{Concurrency: w.Concurrency})
		if err != nil {
			return err
		}
		t = pg
	default:
		return fmt.Errorf("unknown target %q", *target)
	}
	defer t.Close()
	pop := bench.NewPopulation(w.Accounts, "acct", shardOf, w.Seed)
	if *exists && *addr != "" {
		fmt.Fprintf(os.Stderr, "using the %d accounts already on %s\n", w.Accounts, t.Name())
	} else {
		fmt.Fprintf(os.Stderr, "creating %d accounts on %s ...\n", w.Accounts, t.Name())
	}
	if err := t.Setup(ctx, pop); err != nil {
		return err
	}
	if l, ok := t.(*bench.Ledger); ok && *addr == "" {
		// A cluster started here: start measuring once creating the population is over.
		waited, idle, err := l.WaitIdle(ctx, bench.IdleCores, 2*time.Second, 10*time.Minute)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "cluster idle after setup: %v (waited %v)\n", idle, waited.Round(time.Second))
	}
	res, err := bench.Run(ctx, "run", w, pop, t, os.Stderr)
	if res != nil {
		rep := &bench.Report{Title: "ledger-bench run", Command: "ledger-bench run " + strings.Join(args, " "), Results: []*bench.Result{res}}
		fmt.Print(rep.Markdown())
		if *jsonOut != "" {
			if ferr := writeJSON(*jsonOut, res); ferr != nil {
				return ferr
			}
		}
	}
	return err
}

func runSuite(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("suite", flag.ExitOnError)
	out := fs.String("out", "bench", "where RESULTS.md, results.json and the charts go")
	quick := fs.Bool("quick", false, "short runs, small populations (a smoke run)")
	o := bench.SuiteOptions{}
	fs.StringVar(&o.Ledgerd, "ledgerd", "", "ledgerd binary (default: build ./cmd/ledgerd)")
	fs.StringVar(&o.Mode, "mode", "dev", "ledger cluster: dev (3 nodes, one process) or multi (3 processes)")
	fs.IntVar(&o.Accounts, "accounts", 10_000, "accounts of the main runs")
	fs.IntVar(&o.BigAccounts, "big-accounts", 10_000_000, "accounts of the large-population run (0: skip)")
	fs.IntVar(&o.Concurrency, "concurrency", 64, "concurrent single-transfer requests")
	fs.IntVar(&o.Batch, "batch", 1000, "transfers per batched request")
	fs.IntVar(&o.BatchConcurrency, "batch-concurrency", 4, "concurrent batched requests")
	fs.DurationVar(&o.Duration, "duration", 20*time.Second, "measured duration of each run")
	fs.DurationVar(&o.Warmup, "warmup", 3*time.Second, "warm-up of each run")
	fs.DurationVar(&o.BigWarmup, "big-warmup", 3*time.Minute, "warm-up of the first large-population run (cold block caches after the bulk load)")
	fs.BoolVar(&o.SkipPostgres, "skip-postgres", false, "do not run the PostgreSQL baseline")
	fs.BoolVar(&o.SkipEngine, "skip-engine", false, "do not run the engine ceiling")
	fs.IntVar(&o.Repeats, "repeats", 3, "runs of each headline workload; its row is the median run")
	_ = fs.Parse(args)
	if *quick {
		o.Duration, o.Warmup, o.BigWarmup, o.Accounts, o.BigAccounts, o.Batch = 3*time.Second, time.Second, time.Second, 2_000, 20_000, 200
		repeatsSet := false
		fs.Visit(func(f *flag.Flag) { repeatsSet = repeatsSet || f.Name == "repeats" })
		if !repeatsSet {
			o.Repeats = 1
		}
		o.CrossSweep, o.LoadFractions = []float64{0.5}, []float64{0.5}
		o.IdleWindow, o.IdleWaitMax = 500*time.Millisecond, 30*time.Second
	}
	o.Command = "go run ./cmd/ledger-bench suite " + strings.Join(args, " ")
	o.Progress = os.Stderr
	bin, cleanup, err := ledgerd(ctx, o.Ledgerd)
	if err != nil {
		return err
	}
	defer cleanup()
	o.Ledgerd = bin
	rep, err := bench.Suite(ctx, o)
	if rep != nil {
		if werr := writeReport(*out, rep); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

func writeReport(dir string, rep *bench.Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	md := rep.Markdown() + "\n![throughput vs cross-shard ratio](throughput_vs_cross.svg)\n\n![latency vs offered load](latency_vs_load.svg)\n"
	files := map[string]string{
		"RESULTS.md":              md,
		"throughput_vs_cross.svg": bench.ThroughputVsCrossSVG(rep.Results),
		"latency_vs_load.svg":     bench.LatencyVsLoadSVG(rep.Results),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	f, err := os.Create(filepath.Join(dir, "results.json"))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := rep.WriteJSON(f); err != nil {
		return err
	}
	fmt.Fprint(os.Stdout, md)
	fmt.Fprintf(os.Stderr, "wrote %s\n", filepath.Join(dir, "RESULTS.md"))
	return nil
}

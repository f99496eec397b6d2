package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// SuiteOptions shape the side-by-side run: the engine ceiling, PostgreSQL and the ledger
// (0 % and 100 % cross-shard, single transfers and batches, a cross-shard sweep, open-loop
// latency against offered load, and a large account count), one target at a time.
type SuiteOptions struct {
	// Ledgerd is the ledgerd binary (BuildLedgerd makes one).
	Ledgerd string
	// Mode of the ledger cluster: "dev" (3 nodes in one process) or "multi".
	Mode             string
	Accounts         int
	BigAccounts      int // 0: skip the large-population run
	Concurrency      int
	Batch            int
	BatchConcurrency int
	Duration, Warmup time.Duration
	// BigWarmup is the warm-up of the first large-population run (default 3 min): the
	// bulk load leaves every node's block cache cold, and with 10 million accounts
	// (uniform) a short warm-up measures the cache filling, not the ledger as it runs.
	// One restarted dev cluster, 1 GiB of cache per node, 20 s runs (the first three
	// after 40 s of warm-up each): 3,370, 3,181, 4,372, 4,176, 4,683, 4,706 transfers/s
	// (10 k accounts: 5,145–5,502); 2 GiB per node: 3,638, 3,767, 3,779, 4,626, 4,673,
	// 4,059 (the cache's size is not what limits). A 60 s warm-up measured 0.73× of
	// 10 k (suite of 2026-12-02 21:47), all three runs in the plateau before the rise.
	BigWarmup time.Duration
	// CrossSweep are the cross-shard ratios of the sweep (0 and 1 always run).
	CrossSweep []float64
	// LoadFractions of the cross-shard peak for the open-loop latency runs.
	LoadFractions []float64
	// Repeats is how many times the headline workloads run (default 3): the ledger's
	// intra/cross single/batched rows (each run on a fresh cluster), the large
	// population, the engine ceiling and PostgreSQL. Their rows are the run with the
	// median transfers/s, every run listed; the sweep and open-loop rows run once.
	Repeats      int
	SkipPostgres bool
	SkipEngine   bool
	// IdleWindow and IdleWaitMax: before each ledger workload the suite waits until
	// the cluster has used less than IdleCores of CPU over IdleWindow (default 2 s), at
	// most IdleWaitMax (default 10 min), so no row starts while its setup's work runs.
	IdleWindow, IdleWaitMax time.Duration
	Seed                    uint64
	Command                 string
	Progress                io.Writer
}

// Result names the suite produces.
const (
	EngineSingle       = "engine-single"
	EngineBatched      = "engine-batched"
	PostgresSingle     = "postgres-single"
	PostgresBatched    = "postgres-batched"
	LedgerIntraSingle  = "ledger-intra-single"
	LedgerCrossSingle  = "ledger-cross-single"
	LedgerIntraBatched = "ledger-intra-batched"
	LedgerCrossBatched = "ledger-cross-batched"
	// LedgerCrossOverload is the batched cross-shard workload with 4× the clients: past
	// the knee, where a collapse (work done twice, refusals and retries) would show.
	LedgerCrossOverload = "ledger-cross-batched-4x-clients"
	LedgerIntraBig      = "ledger-intra-single-big"
	// LedgerCrossHalf is the open-loop cross-shard row at half the peak (the p99 target).
	LedgerCrossHalf = "ledger-cross-open-050"
	// EngineHalfFloor is the engine offered, open loop, the client proposals per second
	// that LedgerCrossHalf makes (CrossProposalsPerTransfer per transfer): one raft round
	// at that rate with a trivial state machine and no API, the floor under the
	// cross-shard latency.
	EngineHalfFloor = "engine-open-floor-050"
)

// CrossProposalsPerTransfer is how many proposals a lone cross-shard transfer makes
// before its answer: a prepare on each of its two shards and the coordinator's Begin,
// in parallel. (Its follow-up work, two branch commits and the decision with the
// forget, rides in later entries after the answer.)
const CrossProposalsPerTransfer = 3

func (o *SuiteOptions) defaults() {
	if o.Mode == "" {
		o.Mode = "dev"
	}
	if o.Accounts == 0 {
		o.Accounts = 10_000
	}
	if o.Concurrency == 0 {
		o.Concurrency = 64
	}
	if o.Batch == 0 {
		o.Batch = 1000
	}
	if o.BatchConcurrency == 0 {
		o.BatchConcurrency = 4
	}
	if o.Duration == 0 {
		o.Duration = 20 * time.Second
	}
	if o.Warmup == 0 {
		o.Warmup = 3 * time.Second
	}
	if o.BigWarmup == 0 {
		o.BigWarmup = 3 * time.Minute
	}
	if o.CrossSweep == nil {
		o.CrossSweep = []float64{0.25, 0.5, 0.75}
	}
	if o.LoadFractions == nil {
		o.LoadFractions = []float64{0.25, 0.5, 0.75, 1}
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.IdleWindow == 0 {
		o.IdleWindow = 2 * time.Second
	}
	if o.IdleWaitMax == 0 {
		o.IdleWaitMax = 10 * time.Minute
	}
	if o.Repeats <= 0 {
		o.Repeats = 3
	}
}

// repeat runs one workload n times and returns the run with the median transfers/s
// (MedianResult); it stops at the first error.
func repeat(n int, run func() (*Result, error)) (*Result, error) {
	var runs []*Result
	for range n {
		r, err := run()
		if r != nil {
			runs = append(runs, r)
		}
		if err != nil {
			return MedianResult(runs), err
		}
	}
	return MedianResult(runs), nil
}

func (o *SuiteOptions) workload(accounts int, cross float64, batch, conc int, rate float64) Workload {
	return Workload{Accounts: accounts, CrossRatio: cross, Batch: batch, Concurrency: conc, Rate: rate,
		Duration: o.Duration, Warmup: o.Warmup, Seed: o.Seed}
}

// BuildLedgerd builds cmd/ledgerd of the module in moduleDir into dir.
func BuildLedgerd(ctx context.Context, moduleDir, dir string) (string, error) {
	bin := filepath.Join(dir, "ledgerd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/ledgerd")
	cmd.Dir = moduleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build ledgerd: %v\n%s", err, out)
	}
	return bin, nil
}

// Suite runs everything and returns the report (with ratios against the targets of the
// benchmark issue). A target that cannot run (PostgreSQL not installed) is noted.
func Suite(ctx context.Context, o SuiteOptions) (*Report, error) {
	o.defaults()
	rep := &Report{Machine: machine(), Command: o.Command, Started: time.Now().UTC()}
	add := func(r *Result, err error) error {
		if r != nil {
			rep.Results = append(rep.Results, r)
		}
		return err
	}
	// The ledger first: its shard map places the population every target replays. Each
	// ledger workload runs on a cluster of its own, started fresh with the population, so
	// no workload inherits the stores, compaction debt or open transactions of the one
	// before it (the order of the rows does not change their figures).
	l, err := StartLedger(ctx, LedgerOptions{Mode: o.Mode, Binary: o.Ledgerd})
	if err != nil {
		return nil, err
	}
	pop := NewPopulation(o.Accounts, "acct", l.ShardOf, o.Seed)
	l.Close()
	rep.AddNote("every ledger workload runs on a freshly started %s cluster holding the population", o.Mode)
	if o.Repeats > 1 {
		rep.AddNote("the headline rows (ledger intra/cross, single/batched; large population; engine; PostgreSQL) are the median of %d runs, all listed; each ledger run on a fresh cluster", o.Repeats)
	}
	runOnFresh := func(name string, w Workload) (*Result, error) {
		l, err := StartLedger(ctx, LedgerOptions{Mode: o.Mode, Binary: o.Ledgerd})
		if err != nil {
			return nil, err
		}
		defer l.Close()
		if err := l.Setup(ctx, pop); err != nil {
			return nil, fmt.Errorf("ledger setup for %s: %w", name, err)
		}
		if _, idle, err := l.WaitIdle(ctx, IdleCores, o.IdleWindow, o.IdleWaitMax); err != nil {
			return nil, err
		} else if !idle {
			rep.AddNote("%s: the cluster was still busy %v after its setup; measured anyway", name, o.IdleWaitMax)
		}
		return Run(ctx, name, w, pop, l, o.Progress)
	}
	runFresh := func(name string, w Workload, repeats int) error {
		return add(repeat(repeats, func() (*Result, error) { return runOnFresh(name, w) }))
	}
	type row struct {
		name                        string
		cross                       float64
		batch, concurrency, repeats int
	}
	runs := []row{
		{LedgerIntraSingle, 0, 1, o.Concurrency, o.Repeats},
		{LedgerCrossSingle, 1, 1, o.Concurrency, o.Repeats},
		{LedgerIntraBatched, 0, o.Batch, o.BatchConcurrency, o.Repeats},
		{LedgerCrossBatched, 1, o.Batch, o.BatchConcurrency, o.Repeats},
		{LedgerCrossOverload, 1, o.Batch, 4 * o.BatchConcurrency, 1},
	}
	for _, c := range o.CrossSweep {
		runs = append(runs, row{fmt.Sprintf("ledger-cross-%02.0f", c*100), c, 1, o.Concurrency, 1})
	}
	for _, r := range runs {
		if err := runFresh(r.name, o.workload(o.Accounts, r.cross, r.batch, r.concurrency, 0), r.repeats); err != nil {
			return rep, err
		}
	}
	// Open loop: latency against offered load, as fractions of the cross-shard peak.
	if peak := rep.Result(LedgerCrossSingle); peak != nil && peak.TransfersPerSec > 0 {
		for _, f := range o.LoadFractions {
			name := fmt.Sprintf("ledger-cross-open-%03.0f", f*100) // f = 0.5: LedgerCrossHalf
			if err := runFresh(name, o.workload(o.Accounts, 1, 1, ConcurrencyMax/2, peak.TransfersPerSec*f), 1); err != nil {
				return rep, err
			}
		}
	}

	if o.BigAccounts > 0 {
		if err := suiteBig(ctx, o, rep); err != nil {
			return rep, err
		}
	}
	if !o.SkipEngine {
		rep.AddNote("the engine rows propose through the router in the benchmark's process (no Connect server, HTTP or client); the ledger rows go through the public Connect API over loopback HTTP, so the ledger ÷ engine ratios include the API's cost")
		e, err := StartEngine(ctx, EngineOptions{RTTMillisecond: 20})
		if err != nil {
			return rep, fmt.Errorf("engine: %w", err)
		}
		if err := e.Setup(ctx, pop); err == nil {
			err = add(repeat(o.Repeats, func() (*Result, error) {
				return Run(ctx, EngineSingle, o.workload(o.Accounts, 0, 1, o.Concurrency, 0), pop, e, o.Progress)
			}))
			if err == nil {
				err = add(repeat(o.Repeats, func() (*Result, error) {
					return Run(ctx, EngineBatched, o.workload(o.Accounts, 0, o.Batch, o.BatchConcurrency, 0), pop, e, o.Progress)
				}))
			}
		}
		if half := rep.Result(LedgerCrossHalf); err == nil && half != nil && half.Workload.Rate > 0 {
			w := o.workload(o.Accounts, 0, 1, ConcurrencyMax/2, half.Workload.Rate*CrossProposalsPerTransfer)
			err = add(Run(ctx, EngineHalfFloor, w, pop, e, o.Progress))
		}
		e.Close()
		if err != nil {
			return rep, err
		}
	}
	if !o.SkipPostgres {
		if err := suitePostgres(ctx, o, rep, pop); err != nil {
			rep.AddNote("PostgreSQL baseline not run: %v", err)
		}
	}
	addRatios(rep)
	return rep, nil
}

// IdleCores is the CPU per ledgerd process below which a cluster counts as idle (an
// idle dev cluster, one process, uses about 0.05 cores: heartbeats; an idle
// multi-process cluster about 0.07 in each of its three).
const IdleCores = 0.15

func suiteBig(ctx context.Context, o SuiteOptions, rep *Report) error {
	l, err := StartLedger(ctx, LedgerOptions{Mode: o.Mode, Binary: o.Ledgerd})
	if err != nil {
		return err
	}
	defer l.Close()
	pop := NewPopulation(o.BigAccounts, "big", l.ShardOf, o.Seed)
	t0 := time.Now()
	if err := l.Setup(ctx, pop); err != nil {
		return fmt.Errorf("ledger setup of %d accounts: %w", o.BigAccounts, err)
	}
	rep.AddNote("creating %d accounts took %v", o.BigAccounts, time.Since(t0).Round(time.Second))
	waited, idle, err := l.WaitIdle(ctx, IdleCores, o.IdleWindow, o.IdleWaitMax)
	if err != nil {
		return err
	}
	if idle {
		rep.AddNote("after creating them the cluster went idle (under %.2f cores of CPU per ledgerd process over %v) in %v; %s measured then", l.IdleThreshold(IdleCores), o.IdleWindow, waited.Round(time.Second), LedgerIntraBig)
	} else {
		rep.AddNote("after creating them the cluster was still busy %v later; %s measured anyway", waited.Round(time.Second), LedgerIntraBig)
	}
	rep.AddNote("%s: the first run warms up for %v (the block caches start cold after the bulk load), the others for %v", LedgerIntraBig, o.BigWarmup, o.Warmup)
	first := true
	r, err := repeat(o.Repeats, func() (*Result, error) {
		w := o.workload(o.BigAccounts, 0, 1, o.Concurrency, 0)
		if first {
			w.Warmup = o.BigWarmup
		} else { // the run before left compactions behind
			if _, _, err := l.WaitIdle(ctx, IdleCores, o.IdleWindow, o.IdleWaitMax); err != nil {
				return nil, err
			}
		}
		first = false
		return Run(ctx, LedgerIntraBig, w, pop, l, o.Progress)
	})
	if r != nil {
		rep.Results = append(rep.Results, r)
	}
	return err
}

func suitePostgres(ctx context.Context, o SuiteOptions, rep *Report, pop *Population) error {
	pg, err := StartPostgres(ctx, PostgresOptions{Concurrency: max(o.Concurrency, o.BatchConcurrency)})
	if err != nil {
		return err
	}
	defer pg.Close()
	if err := pg.Setup(ctx, pop); err != nil {
		return err
	}
	for _, r := range []struct {
		name               string
		batch, concurrency int
	}{{PostgresSingle, 1, o.Concurrency}, {PostgresBatched, o.Batch, o.BatchConcurrency}} {
		res, err := repeat(o.Repeats, func() (*Result, error) {
			return Run(ctx, r.name, o.workload(o.Accounts, 0, r.batch, r.concurrency, 0), pop, pg, o.Progress)
		})
		if res != nil {
			res.Note = "each transfer is its own SQL transaction (fsync and synchronous_commit on)"
			rep.Results = append(rep.Results, res)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// addRatios records the benchmark's targets.
func addRatios(rep *Report) {
	rep.AddRatio("100% cross-shard, 1 transfer/request vs PostgreSQL", LedgerCrossSingle, PostgresSingle, 2)
	rep.AddRatio("100% cross-shard, batched vs PostgreSQL", LedgerCrossBatched, PostgresBatched, 10)
	rep.AddRatio("cross-shard vs intra-shard (1 transfer/request)", LedgerCrossSingle, LedgerIntraSingle, 0.5)
	rep.AddRatio("cross-shard vs intra-shard (batched)", LedgerCrossBatched, LedgerIntraBatched, 0)
	rep.AddRatio("batched cross-shard, 4× the clients vs the batched row (overload)", LedgerCrossOverload, LedgerCrossBatched, 0)
	rep.AddRatio("intra-shard vs engine ceiling (1 transfer/request)", LedgerIntraSingle, EngineSingle, 0.6)
	rep.AddRatio("intra-shard vs engine ceiling (batched)", LedgerIntraBatched, EngineBatched, 0)
	rep.AddRatio("large population vs small (intra-shard)", LedgerIntraBig, LedgerIntraSingle, 0.8)
	// p99 at half the peak rate, cross-shard.
	if r := rep.Result(LedgerCrossHalf); r != nil {
		mark := "✗"
		if r.Latency.P99 <= 10 {
			mark = "✓"
		}
		rep.AddNote("p99 latency at half the cross-shard peak (%.0f transfers/s offered): %.2f ms (target ≤ 10 ms) %s",
			r.Workload.Rate*float64(r.Workload.Batch), r.Latency.P99, mark)
		if e := rep.Result(EngineHalfFloor); e != nil {
			rep.AddNote("the floor under it (%s): the bare engine offered the %.0f proposals/s those transfers make before their answers (%d each, in parallel; single proposals, no state machine work, no API) answered with p50 %.2f ms, p99 %.2f ms",
				EngineHalfFloor, e.Workload.Rate, CrossProposalsPerTransfer, e.Latency.P50, e.Latency.P99)
		}
	} else {
		rep.AddNote("p99 latency at half the cross-shard peak: not measured")
	}
}

func machine() string {
	host, _ := os.Hostname()
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d vCPU (%s), %s/%s, %s", host, runtime.NumCPU(), cpu, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

package bench

import (
	"context"
	"encoding/xml"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestSuiteSmoke runs the whole harness for a few seconds: a real `ledgerd dev` process
// over its Connect API (intra, cross, batched, a sweep point, an open-loop point), the
// engine ceiling and PostgreSQL, then the report with its ratios and charts.
func TestSuiteSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds ledgerd and runs every target")
	}
	bin := buildTestLedgerd(t)
	o := SuiteOptions{Ledgerd: bin, Accounts: 500, Concurrency: 16, Batch: 20, BatchConcurrency: 2,
		Duration: time.Second, Warmup: 300 * time.Millisecond, CrossSweep: []float64{0.5}, LoadFractions: []float64{0.5},
		SkipPostgres: !PostgresAvailable(), Command: "go test ./bench -run TestSuiteSmoke",
		IdleWindow: 200 * time.Millisecond, IdleWaitMax: 5 * time.Second, Repeats: 2}
	if o.SkipPostgres {
		t.Log("PostgreSQL server binaries not installed: the PostgreSQL baseline is left out of this smoke run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := Suite(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{LedgerIntraSingle, LedgerCrossSingle, LedgerIntraBatched, LedgerCrossBatched, LedgerCrossOverload, "ledger-cross-50",
		LedgerCrossHalf, EngineSingle, EngineBatched, EngineHalfFloor}
	if !o.SkipPostgres {
		want = append(want, PostgresSingle, PostgresBatched)
	}
	for _, name := range want {
		r := rep.Result(name)
		if r == nil {
			t.Fatalf("no result %q", name)
		}
		if r.TransfersPerSec <= 0 || r.Latency.P99 <= 0 {
			t.Errorf("%s measured nothing: %+v", name, r)
		}
		if len(r.Errors) > 0 {
			t.Errorf("%s had errors: %v", name, r.Errors)
		}
	}
	// Headline rows are the median of Repeats runs (all listed); the others run once.
	for _, name := range want {
		n := len(rep.Result(name).Runs)
		headline := !strings.HasPrefix(name, "ledger-cross-50") && !strings.HasPrefix(name, "ledger-cross-open") && name != LedgerCrossOverload && name != EngineHalfFloor
		if headline && n != o.Repeats || !headline && n != 0 {
			t.Errorf("%s lists %d runs", name, n)
		}
	}
	if r := rep.Result(LedgerCrossSingle); r.CrossMeasured != 1 {
		t.Errorf("cross-shard run measured %v cross-shard", r.CrossMeasured)
	}
	md := rep.Markdown()
	for _, s := range []string{"cross-shard vs intra-shard", "engine ceiling", "p99 latency at half", "the floor under it"} {
		if !strings.Contains(md, s) {
			t.Errorf("report lacks %q", s)
		}
	}
	for _, svg := range []string{ThroughputVsCrossSVG(rep.Results), LatencyVsLoadSVG(rep.Results)} {
		d := xml.NewDecoder(strings.NewReader(svg))
		for {
			if _, err := d.Token(); err != nil {
				if err.Error() != "EOF" {
					t.Fatalf("svg does not parse: %v", err)
				}
				break
			}
		}
	}
	_ = os.Stdout
}

// buildTestLedgerd builds ./cmd/ledgerd of this module into the test's temp dir.
func buildTestLedgerd(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	bin, err := BuildLedgerd(context.Background(), filepath.Dir(filepath.Dir(file)), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

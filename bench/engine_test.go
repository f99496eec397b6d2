package bench

import (
	"context"
	"testing"
	"time"
)

func TestEngine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := StartEngine(ctx, EngineOptions{Groups: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	p := NewPopulation(64, "eng", func(id string) uint64 { return uint64(len(id)%2 + 1) }, 1)
	if p.Shards() != 2 {
		t.Fatalf("population spans %d shards, want 2", p.Shards())
	}
	if err := e.Setup(ctx, p); err != nil {
		t.Fatal(err)
	}

	// One request touching both groups (eng-0..9 live on shard 2, eng-10.. on shard 1).
	c0, t0 := e.Applied()
	batch := make([]Transfer, 10)
	for i := range batch {
		batch[i] = Transfer{ID: "eng-t-" + string(rune('a'+i)), Debit: int32(i * 5), Credit: int32(i*5 + 1), Amount: 1}
	}
	if err := e.Do(ctx, batch, NewRecorder()); err != nil {
		t.Fatal(err)
	}
	c1, t1 := e.Applied()
	if c1-c0 != 2 || t1-t0 != int64(len(batch)) {
		t.Fatalf("applied %d commands / %d transfers, want 2 / %d", c1-c0, t1-t0, len(batch))
	}

	// A short run.
	w := Workload{Accounts: 64, Batch: 10, Concurrency: 16, Duration: 2 * time.Second, Warmup: 300 * time.Millisecond}
	res, err := Run(ctx, "engine-quick", w, p, e, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.TransfersPerSec <= 0 || len(res.Errors) > 0 {
		t.Fatalf("run: %.0f transfers/s, errors %v", res.TransfersPerSec, res.Errors)
	}
	c2, t2 := e.Applied()
	if t2-t1 < res.Transfers {
		t.Fatalf("applied %d transfers during the run, measured %d", t2-t1, res.Transfers)
	}
	t.Logf("engine (2 groups): %.0f transfers/s, %d requests, %d commands applied, p50 %.2f ms, p99 %.2f ms, cpu %.3f s/1k (incl. load generator)",
		res.TransfersPerSec, res.Requests, c2-c1, res.Latency.P50, res.Latency.P99, res.CPUSecondsPer1k)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

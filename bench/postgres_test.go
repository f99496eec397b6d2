package bench

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestPostgresBaseline(t *testing.T) {
	if !PostgresAvailable() {
		t.Skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
	}
	ctx := context.Background()
	pg, err := StartPostgres(ctx, PostgresOptions{Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	dir := pg.dir
	pop := NewPopulation(100, "pg", func(string) uint64 { return 1 }, 1)
	if err := pg.Setup(ctx, pop); err != nil {
		t.Fatal(err)
	}
	rec := NewRecorder()
	batch := []Transfer{{ID: "t1", Debit: 0, Credit: 1, Amount: 5}, {ID: "t2", Debit: 2, Credit: 1, Amount: 7}, {ID: "t1", Debit: 0, Credit: 1, Amount: 5}}
	if err := pg.Do(ctx, batch, rec); err != nil {
		t.Fatal(err)
	}
	if rec.errors["EXISTS"] != 1 {
		t.Fatalf("repeated id: %v", rec.errors)
	}
	var d, c, n int64
	if err := pg.pool.QueryRow(ctx, "SELECT sum(debits_posted), sum(credits_posted), (SELECT sum(amount) FROM transfers) FROM accounts").Scan(&d, &c, &n); err != nil {
		t.Fatal(err)
	}
	if d != 12 || c != 12 || n != 12 {
		t.Fatalf("sums %d %d %d, want 12", d, c, n)
	}
	res, err := Run(ctx, "pg-smoke", Workload{Accounts: 100, Batch: 1, Concurrency: 4, Duration: 2 * time.Second, Warmup: 200 * time.Millisecond, Seed: 1}, pop, pg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.TransfersPerSec <= 0 || pg.CPUSeconds() <= 0 {
		t.Fatalf("no work measured: %+v cpu %v", res, pg.CPUSeconds())
	}
	t.Logf("postgres, concurrency 4: %.0f transfers/s, p99 %.2f ms", res.TransfersPerSec, res.Latency.P99)
	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temp dir left behind: %v", err)
	}
}

package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestPostgresKindOf(t *testing.T) {
	var p Postgres
	for err, want := range map[error]string{
		&pgconn.PgError{Code: "40001"}:                            "serialization_failure",
		fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "40P01"}): "deadlock_detected",
		&pgconn.PgError{Code: "XX999"}:                            "sqlstate_XX999",
		errors.New("boom"):                                        "error",
	} {
		if got := p.KindOf(err); got != want {
			t.Errorf("KindOf(%v) = %q, want %q", err, got, want)
		}
	}
}

func TestPostgresProcStat(t *testing.T) {
	s, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.ppid != os.Getppid() {
		t.Fatalf("ppid %d, want %d", s.ppid, os.Getppid())
	}
}

func TestPostgresTarget(t *testing.T) {
	if !PostgresAvailable() {
		t.Skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	t0 := time.Now()
	pg, err := StartPostgres(ctx, PostgresOptions{Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	t.Logf("initdb %v, server start %v, total %v (port %d, dir %s)", pg.InitDuration.Round(time.Millisecond),
		pg.StartDuration.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), pg.Port(), pg.Dir())
	dir := pg.Dir()
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}

	pop := NewPopulation(100, "pg", func(string) uint64 { return 1 }, 1)
	t0 = time.Now()
	if err := pg.Setup(ctx, pop); err != nil {
		t.Fatal(err)
	}
	t.Logf("setup (100 accounts) %v", time.Since(t0).Round(time.Millisecond))
	db := pg.Pool()
	var n int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM accounts`).Scan(&n); err != nil || n != 100 {
		t.Fatalf("accounts: %d %v", n, err)
	}

	balance := func(id string) (debits, credits int64) {
		t.Helper()
		if err := db.QueryRow(ctx, `SELECT debits_posted, credits_posted FROM accounts WHERE id = $1`, id).Scan(&debits, &credits); err != nil {
			t.Fatal(err)
		}
		return
	}
	checkSums := func(want int64) {
		t.Helper()
		var d, c, a int64
		if err := db.QueryRow(ctx, `SELECT (SELECT sum(debits_posted) FROM accounts), (SELECT sum(credits_posted) FROM accounts),
			(SELECT coalesce(sum(amount), 0) FROM transfers)`).Scan(&d, &c, &a); err != nil {
			t.Fatal(err)
		}
		if d != c || c != a || (want >= 0 && a != want) {
			t.Fatalf("Σ debits %d, Σ credits %d, Σ transfer amounts %d (want %d)", d, c, a, want)
		}
	}

	rec := NewRecorder()
	// pg-0 < pg-1 < pg-2 by id: t1 updates its debit first, t3 its credit first.
	if err := pg.Do(ctx, []Transfer{
		{ID: "t1", Debit: 0, Credit: 1, Amount: 5},
		{ID: "t2", Debit: 2, Credit: 1, Amount: 7},
		{ID: "t3", Debit: 1, Credit: 0, Amount: 3},
	}, rec); err != nil {
		t.Fatal(err)
	}
	checkSums(15)
	d0, c0 := balance("pg-0")
	d1, c1 := balance("pg-1")
	if d0 != 5 || c0 != 3 || d1 != 3 || c1 != 12 {
		t.Fatalf("pg-0 %d/%d pg-1 %d/%d", d0, c0, d1, c1)
	}

	// A repeated id is EXISTS and changes nothing (even with other accounts/amount).
	if err := pg.Do(ctx, []Transfer{{ID: "t1", Debit: 0, Credit: 1, Amount: 5}, {ID: "t1", Debit: 3, Credit: 4, Amount: 9}}, rec); err != nil {
		t.Fatal(err)
	}
	checkSums(15)
	if d, c := balance("pg-0"); d != d0 || c != c0 {
		t.Fatalf("repeated id moved pg-0: %d/%d", d, c)
	}
	if d, _ := balance("pg-3"); d != 0 {
		t.Fatalf("repeated id moved pg-3: %d", d)
	}

	// The balance check: a guarded account with no credits cannot be debited.
	if _, err := db.Exec(ctx, `UPDATE accounts SET debits_must_not_exceed_credits = true WHERE id = 'pg-5'`); err != nil {
		t.Fatal(err)
	}
	if err := pg.Do(ctx, []Transfer{
		{ID: "t4", Debit: 5, Credit: 6, Amount: 1},  // refused
		{ID: "t5", Debit: 6, Credit: 5, Amount: 10}, // funds pg-5
		{ID: "t6", Debit: 5, Credit: 6, Amount: 4},  // now fine
		{ID: "t7", Debit: 5, Credit: 6, Amount: 7},  // 10-4 < 7: refused
	}, rec); err != nil {
		t.Fatal(err)
	}
	checkSums(29)
	if d, c := balance("pg-5"); d != 4 || c != 10 {
		t.Fatalf("pg-5 %d/%d, want 4/10", d, c)
	}
	var refused int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM transfers WHERE id IN ('t4', 't7')`).Scan(&refused); err != nil || refused != 0 {
		t.Fatalf("refused transfers recorded: %d %v", refused, err)
	}
	res := rec.Result("do", pg.Name(), Workload{}, time.Second)
	if want := map[string]int64{PgExists: 2, PgInsufficientOrNotFound: 2}; fmt.Sprint(res.Errors) != fmt.Sprint(want) {
		t.Fatalf("errors %v, want %v", res.Errors, want)
	}
	if _, err := db.Exec(ctx, `UPDATE accounts SET debits_must_not_exceed_credits = false WHERE id = 'pg-5'`); err != nil {
		t.Fatal(err)
	}
	// A quick measured run.
	w := Workload{Accounts: 100, Batch: 1, Concurrency: 4, Duration: 2 * time.Second, Warmup: 200 * time.Millisecond, Seed: 1}
	r, err := Run(ctx, "pg-quick", w, pop, pg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.TransfersPerSec <= 0 || len(r.Errors) > 0 {
		t.Fatalf("quick run: %.0f transfers/s, errors %v", r.TransfersPerSec, r.Errors)
	}
	t.Logf("quick run, concurrency 4: %.0f transfers/s (%d transfers), p50 %.2f ms, p99 %.2f ms, retries %d, server CPU %.3f s/1k transfers",
		r.TransfersPerSec, r.Transfers, r.Latency.P50, r.Latency.P99, r.Retries, r.CPUSecondsPer1k)
	checkSums(-1)
	// Checked after the measured run, not after the handful of transfers above: the
	// kernel counts CPU in clock ticks (10 ms), and on a fast machine those few
	// transactions can all fit inside one tick and read as zero.
	if cpu := pg.CPUSeconds(); cpu <= 0 || r.CPUSecondsPer1k <= 0 {
		t.Fatalf("server CPU %v s in total, %v s per 1k transfers after a %v run of %d transfers", cpu, r.CPUSecondsPer1k, w.Duration, r.Transfers)
	}

	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temp dir left behind: %v", err)
	}
	if pg.CPUSeconds() != 0 && pidAlive(pg.pid) {
		t.Fatalf("server still running after Close")
	}
	if err := pg.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func pidAlive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

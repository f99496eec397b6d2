package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresOptions configure the PostgreSQL baseline.
type PostgresOptions struct {
	// Concurrency sizes the connection pool (and max_connections).
	Concurrency int
}

// Postgres is the baseline: a private PostgreSQL server (Debian's package) on loopback
// in a temp dir, durable (fsync, synchronous_commit, full_page_writes on), where each
// transfer is one SQL transaction with the overdraft check — what a payment service on
// PostgreSQL does.
type Postgres struct {
	dir     string
	bin     string
	port    int
	runAs   string
	pool    *pgxpool.Pool
	pop     *Population
	logTail func() string
}

var _ Target = (*Postgres)(nil)

func postgresBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries not installed (apt-get install postgresql)")
}

// PostgresAvailable tells whether the server binaries are installed.
func PostgresAvailable() bool { _, err := postgresBin(); return err == nil }

// StartPostgres starts the server and connects a pool.
func StartPostgres(ctx context.Context, o PostgresOptions) (*Postgres, error) {
	if o.Concurrency <= 0 {
		o.Concurrency = 64
	}
	bin, err := postgresBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ledger-bench-pg-*")
	if err != nil {
		return nil, err
	}
	pg := &Postgres{dir: dir, bin: bin}
	pg.logTail = func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		if len(b) > 2000 {
			b = b[len(b)-2000:]
		}
		return string(b)
	}
	if os.Geteuid() == 0 { // PostgreSQL refuses to run as root
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running as root needs the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		pg.runAs = "postgres"
	}
	if pg.port, err = freePort(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if out, err := pg.cmd(ctx, "initdb", "-D", data, "-U", "bench", "--auth=trust", "-E", "UTF8", "--no-instructions").CombinedOutput(); err != nil {
		pg.Close()
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories=%s -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c max_connections=%d -c shared_buffers=128MB",
		pg.port, dir, o.Concurrency+10)
	start := pg.cmd(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(dir, "server.log"), "-o", opts, "-w", "-t", "60", "start")
	if out, err := start.CombinedOutput(); err != nil {
		pg.Close()
		return nil, fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, pg.logTail())
	}
	cfg, err := pgxpool.ParseConfig(fmt.Sprintf("postgres://bench@127.0.0.1:%d/postgres?sslmode=disable", pg.port))
	if err != nil {
		pg.Close()
		return nil, err
	}
	cfg.MaxConns = int32(o.Concurrency)
	cfg.MinConns = int32(min(o.Concurrency, 8))
	if pg.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		pg.Close()
		return nil, err
	}
	return pg, nil
}

func (pg *Postgres) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	path := filepath.Join(pg.bin, name)
	if pg.runAs != "" {
		return exec.CommandContext(ctx, "runuser", append([]string{"-u", pg.runAs, "--", path}, args...)...)
	}
	return exec.CommandContext(ctx, path, args...)
}

// Name implements Target.
func (pg *Postgres) Name() string { return "postgresql" }

// Setup creates the schema and loads the accounts with COPY.
func (pg *Postgres) Setup(ctx context.Context, p *Population) error {
	pg.pop = p
	_, err := pg.pool.Exec(ctx, `
CREATE TABLE IF NOT EXISTS accounts (
  id text PRIMARY KEY,
  debits_posted bigint NOT NULL DEFAULT 0, credits_posted bigint NOT NULL DEFAULT 0,
  debits_pending bigint NOT NULL DEFAULT 0, credits_pending bigint NOT NULL DEFAULT 0,
  debits_must_not_exceed_credits bool NOT NULL DEFAULT false);
CREATE TABLE IF NOT EXISTS transfers (
  id text PRIMARY KEY, debit_account_id text NOT NULL, credit_account_id text NOT NULL,
  amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());`)
	if err != nil {
		return fmt.Errorf("postgres schema: %w", err)
	}
	const chunk = 50_000
	for i := 0; i < len(p.IDs); i += chunk {
		ids := p.IDs[i:min(i+chunk, len(p.IDs))]
		_, err := pg.pool.CopyFrom(ctx, pgx.Identifier{"accounts"}, []string{"id"},
			pgx.CopyFromSlice(len(ids), func(j int) ([]any, error) { return []any{ids[j]}, nil }))
		if err != nil {
			return fmt.Errorf("postgres copy accounts: %w", err)
		}
	}
	_, err = pg.pool.Exec(ctx, "ANALYZE accounts")
	return err
}

var errNoRow = errors.New("account not found or overdraft")

// Do runs each transfer of the batch as its own transaction: debit (with the overdraft
// check), credit, insert the transfer (its id is the idempotency key). The two account
// rows are updated in id order so concurrent transfers cannot deadlock.
func (pg *Postgres) Do(ctx context.Context, batch []Transfer, rec *Recorder) error {
	conn, err := pg.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	for _, t := range batch {
		d, c := pg.pop.IDs[t.Debit], pg.pop.IDs[t.Credit]
		for attempt := 0; ; attempt++ {
			err := pg.transfer(ctx, conn.Conn(), t, d, c)
			switch {
			case err == nil:
			case errors.Is(err, errNoRow):
				rec.Error("INSUFFICIENT_FUNDS_OR_NOT_FOUND", 1)
			case errors.Is(err, errExists):
				rec.Error("EXISTS", 1)
			case retryablePG(err) && attempt < 10:
				rec.Retry()
				continue
			default:
				return err
			}
			break
		}
	}
	return nil
}

var errExists = errors.New("transfer exists")

func (pg *Postgres) transfer(ctx context.Context, conn *pgx.Conn, t Transfer, d, c string) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	debit := func() error {
		tag, err := tx.Exec(ctx, `UPDATE accounts SET debits_posted = debits_posted + $2
WHERE id = $1 AND (NOT debits_must_not_exceed_credits OR credits_posted - debits_posted - debits_pending >= $2)`, d, int64(t.Amount))
		if err == nil && tag.RowsAffected() != 1 {
			err = errNoRow
		}
		return err
	}
	credit := func() error {
		tag, err := tx.Exec(ctx, `UPDATE accounts SET credits_posted = credits_posted + $2 WHERE id = $1`, c, int64(t.Amount))
		if err == nil && tag.RowsAffected() != 1 {
			err = errNoRow
		}
		return err
	}
	first, second := debit, credit
	if c < d {
		first, second = credit, debit
	}
	if err := first(); err != nil {
		return err
	}
	if err := second(); err != nil {
		return err
	}
	tag, err := tx.Exec(ctx, `INSERT INTO transfers (id, debit_account_id, credit_account_id, amount) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`,
		t.ID, d, c, int64(t.Amount))
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return errExists
	}
	return tx.Commit(ctx)
}

func retryablePG(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// KindOf names an error by its SQLSTATE.
func (pg *Postgres) KindOf(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return "sqlstate-" + pe.Code
	}
	return "error"
}

// CPUSeconds is the CPU time of the postmaster and its children (the server only).
func (pg *Postgres) CPUSeconds() float64 {
	b, err := os.ReadFile(filepath.Join(pg.dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return 0
	}
	total := ProcCPUSeconds(pid)
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndex(s, ") ")
		if i < 0 {
			continue
		}
		fields := strings.Fields(s[i+2:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			total += ProcCPUSeconds(child)
		}
	}
	return total
}

// Close stops the server and removes its directory.
func (pg *Postgres) Close() error {
	if pg.pool != nil {
		pg.pool.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := os.Stat(filepath.Join(pg.dir, "data", "postmaster.pid")); err == nil {
		_ = pg.cmd(ctx, "pg_ctl", "-D", filepath.Join(pg.dir, "data"), "-m", "fast", "-w", "stop").Run()
	}
	return os.RemoveAll(pg.dir)
}

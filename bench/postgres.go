package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresOptions shape the private PostgreSQL server of the baseline.
type PostgresOptions struct {
	// Concurrency is the most concurrent requests the target will see: the connection
	// pool's size (max_connections is Concurrency+10). Default 64.
	Concurrency int
	// BinDir holds initdb, postgres and pg_ctl (default: /usr/lib/postgresql/15/bin, else
	// the newest /usr/lib/postgresql/*/bin).
	BinDir string
	// Dir is the parent of the server's temp dir (default os.TempDir()). When running as
	// root it must be traversable by the postgres user.
	Dir string
	// SharedBuffers is shared_buffers (default "128MB").
	SharedBuffers string
	// StartTimeout bounds initdb and the server's start-up each (default 60 s).
	StartTimeout time.Duration
	// RetryMax bounds the retries of one transfer on serialization failures and
	// deadlocks (default 10).
	RetryMax int
}

// Postgres is the PostgreSQL baseline: a private server (durability on: fsync,
// synchronous_commit, full_page_writes) that runs each transfer as its own SQL
// transaction, the way a payment service on PostgreSQL does.
type Postgres struct {
	opts    PostgresOptions
	bin     string
	tmp     string
	data    string
	logPath string
	port    int
	asUser  *user.User // non-nil: server commands run as this user (we are root)
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the server process (or its runuser) exits
	pid     int           // the postmaster
	pool    *pgxpool.Pool
	pop     *Population

	InitDuration  time.Duration // initdb
	StartDuration time.Duration // server start until it accepts connections

	closeOnce sync.Once
	closeErr  error
}

var (
	_ Target    = (*Postgres)(nil)
	_ ErrorKind = (*Postgres)(nil)
)

// ErrPostgresNotInstalled is returned (wrapped) by StartPostgres when no PostgreSQL
// server binaries are found.
var ErrPostgresNotInstalled = errors.New("PostgreSQL server binaries not installed (apt-get install postgresql)")

// PostgresBinDir finds PostgreSQL's server binaries: /usr/lib/postgresql/15/bin when
// present, else the newest /usr/lib/postgresql/*/bin.
func PostgresBinDir() (string, error) {
	ok := func(dir string) bool {
		for _, b := range []string{"initdb", "postgres", "pg_ctl"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if d := "/usr/lib/postgresql/15/bin"; ok(d) {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestV := "", -1.0
	for _, d := range dirs {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err == nil && v > bestV && ok(d) {
			best, bestV = d, v
		}
	}
	if best == "" {
		return "", fmt.Errorf("%w: no initdb/postgres/pg_ctl under /usr/lib/postgresql/*/bin", ErrPostgresNotInstalled)
	}
	return best, nil
}

// PostgresAvailable tells whether PostgreSQL's server binaries are installed.
func PostgresAvailable() bool { _, err := PostgresBinDir(); return err == nil }

// StartPostgres initializes a cluster in a fresh temp dir and starts a server on
// 127.0.0.1 at a free port (plus a unix socket inside the temp dir). As root, the server
// runs as the postgres system user (PostgreSQL refuses root). Close stops it and removes
// the dir.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 64
	}
	if opts.SharedBuffers == "" {
		opts.SharedBuffers = "128MB"
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 60 * time.Second
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = 10
	}
	p := &Postgres{opts: opts, bin: opts.BinDir}
	if p.bin == "" {
		var err error
		if p.bin, err = PostgresBinDir(); err != nil {
			return nil, err
		}
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("postgres: running as root needs the postgres system user (apt-get install postgresql): %w", err)
		}
		p.asUser = u
	}
	if err := p.start(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Postgres) start(ctx context.Context) error {
	var err error
	if p.tmp, err = os.MkdirTemp(p.opts.Dir, "shardledger-pg-"); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	p.data = filepath.Join(p.tmp, "data")
	p.logPath = filepath.Join(p.tmp, "server.log")
	sock := filepath.Join(p.tmp, "sock")
	if err := os.Mkdir(sock, 0o700); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if p.asUser != nil {
		uid, _ := strconv.Atoi(p.asUser.Uid)
		gid, _ := strconv.Atoi(p.asUser.Gid)
		for _, d := range []string{p.tmp, sock} {
			if err := os.Chown(d, uid, gid); err != nil {
				return fmt.Errorf("postgres: chown %s to the postgres user: %w", d, err)
			}
		}
	}

	// initdb: trust auth (the server listens on loopback and a private socket only);
	// --no-sync skips flushing the fresh catalog once, the running server has fsync on.
	t0 := time.Now()
	ictx, cancel := context.WithTimeout(ctx, p.opts.StartTimeout)
	out, err := p.command(ictx, "initdb", "-D", p.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
		"--locale=C", "--no-sync", "--no-instructions").CombinedOutput()
	cancel()
	if err != nil {
		if ictx.Err() != nil {
			err = fmt.Errorf("did not finish within %v", p.opts.StartTimeout)
		}
		return fmt.Errorf("postgres: initdb in %s: %v\n%s", p.data, err, tail(out, 2048))
	}
	p.InitDuration = time.Since(t0)

	t0 = time.Now()
	for attempt := 0; ; attempt++ {
		err := p.startServer(ctx, sock)
		if err == nil {
			break
		}
		// Another process may have taken the free port between probe and bind.
		if attempt < 3 && ctx.Err() == nil && p.serverExited() && strings.Contains(p.logTail(), "could not bind") {
			continue
		}
		return err
	}
	p.StartDuration = time.Since(t0)

	cfg, err := pgxpool.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=10", p.port))
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	cfg.MaxConns = int32(p.opts.Concurrency)
	// Extended protocol with statements prepared once per connection (pgx's default).
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
	if p.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.pool.Ping(pctx); err != nil {
		return fmt.Errorf("postgres: %w\nserver log:\n%s", err, p.logTail())
	}
	return nil
}

// startServer runs postgres in the foreground as our child (so it dies with us, and a
// terminal's ^C fast-stops it too) and waits until it accepts connections.
func (p *Postgres) startServer(ctx context.Context, sock string) error {
	port, err := freePort()
	if err != nil {
		return fmt.Errorf("postgres: free port: %w", err)
	}
	p.port = port
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer logf.Close() // the child holds its own copy
	set := []string{
		"listen_addresses=127.0.0.1",
		"port=" + strconv.Itoa(port),
		"unix_socket_directories=" + sock,
		// Durability on, like the ledger: every commit waits for its WAL flush.
		"fsync=on",
		"synchronous_commit=on",
		"full_page_writes=on",
		"max_connections=" + strconv.Itoa(max(p.opts.Concurrency+10, 20)),
		"shared_buffers=" + p.opts.SharedBuffers,
		// Fewer forced checkpoints during loads and runs (a routine production setting).
		"max_wal_size=2GB",
		"logging_collector=off",
	}
	args := []string{"-D", p.data}
	for _, s := range set {
		args = append(args, "-c", s)
	}
	cmd := p.command(context.Background(), "postgres", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("postgres: start server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	p.cmd, p.exited = cmd, exited

	deadline := time.Now().Add(p.opts.StartTimeout)
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=2", port)
	var lastErr error
	for {
		select {
		case <-exited:
			return fmt.Errorf("postgres: server exited during start-up (%v)\nserver log:\n%s", cmd.ProcessState, p.logTail())
		default:
		}
		if ctx.Err() != nil {
			return fmt.Errorf("postgres: start-up: %w", ctx.Err())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres: server did not accept connections within %v (last: %v)\nserver log:\n%s",
				p.opts.StartTimeout, lastErr, p.logTail())
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := pgconn.Connect(cctx, dsn)
		cancel()
		if err == nil {
			_ = c.Close(context.Background())
			break
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	pid, err := p.readPid()
	if err != nil {
		return fmt.Errorf("postgres: %w\nserver log:\n%s", err, p.logTail())
	}
	p.pid = pid
	return nil
}

func (p *Postgres) serverExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// command runs a PostgreSQL binary, as the postgres user when we are root.
func (p *Postgres) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	bin := filepath.Join(p.bin, name)
	var cmd *exec.Cmd
	if p.asUser != nil {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", p.asUser.Username, "--", bin}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, bin, args...)
	}
	cmd.Dir = p.tmp // the postgres user may not be able to enter our working dir
	env := []string{"LC_ALL=C", "LANG=C"}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "PG") && !strings.HasPrefix(e, "LC_") && !strings.HasPrefix(e, "LANG=") {
			env = append(env, e)
		}
	}
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func (p *Postgres) readPid() (int, error) {
	b, err := os.ReadFile(filepath.Join(p.data, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad postmaster.pid %q", line)
	}
	return pid, nil
}

// logTail is the end of the server log (for errors).
func (p *Postgres) logTail() string {
	if p.logPath == "" {
		return ""
	}
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	return string(tail(b, 4096))
}

func tail(b []byte, n int) []byte {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return b
}

// Name implements Target.
func (p *Postgres) Name() string { return "postgresql" }

// Dir is the server's temp dir (removed by Close).
func (p *Postgres) Dir() string { return p.tmp }

// Port is the server's TCP port on 127.0.0.1.
func (p *Postgres) Port() int { return p.port }

// Pool is the target's connection pool (for checks).
func (p *Postgres) Pool() *pgxpool.Pool { return p.pool }

// Setup implements Target: (re)creates the accounts and transfers tables and loads the
// population's accounts with COPY (in parallel chunks, the primary key built after the
// load), then VACUUM ANALYZE and a CHECKPOINT so the run starts from a clean state.
// Accounts carry no balance constraint (debits_must_not_exceed_credits false), like the
// ledger's benchmark accounts: funds never run out.
func (p *Postgres) Setup(ctx context.Context, pop *Population) error {
	if p.pool == nil {
		return errors.New("postgres: not started")
	}
	for _, q := range []string{
		`DROP TABLE IF EXISTS transfers, accounts`,
		// fillfactor leaves room on each page for HOT updates of the balances.
		`CREATE TABLE accounts (id text NOT NULL, debits_posted bigint NOT NULL DEFAULT 0,
			credits_posted bigint NOT NULL DEFAULT 0, debits_pending bigint NOT NULL DEFAULT 0,
			credits_pending bigint NOT NULL DEFAULT 0,
			debits_must_not_exceed_credits bool NOT NULL DEFAULT false) WITH (fillfactor = 80)`,
		`CREATE TABLE transfers (id text PRIMARY KEY, debit_account_id text NOT NULL,
			credit_account_id text NOT NULL, amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`,
	} {
		if _, err := p.pool.Exec(ctx, q); err != nil {
			return fmt.Errorf("postgres: setup: %w", err)
		}
	}
	const chunk = 100_000
	workers := min(4, int(p.pool.Config().MaxConns))
	jobs := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	cols := []string{"id", "debits_posted", "credits_posted", "debits_pending", "credits_pending", "debits_must_not_exceed_credits"}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for start := range jobs {
				ids := pop.IDs[start:min(start+chunk, len(pop.IDs))]
				row := make([]any, 6)
				_, err := p.pool.CopyFrom(lctx, pgx.Identifier{"accounts"}, cols, pgx.CopyFromSlice(len(ids), func(i int) ([]any, error) {
					row[0], row[1], row[2], row[3], row[4], row[5] = ids[i], int64(0), int64(0), int64(0), int64(0), false
					return row, nil
				}))
				if err != nil {
					errs <- fmt.Errorf("postgres: copy accounts %d-%d: %w", start, start+len(ids)-1, err)
					cancel()
					return
				}
			}
		}()
	}
feed:
	for start := 0; start < len(pop.IDs); start += chunk {
		select {
		case jobs <- start:
		case <-lctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres: setup: %w", err)
	}
	defer conn.Release()
	for _, q := range []string{
		`SET maintenance_work_mem = '512MB'`,
		`ALTER TABLE accounts ADD PRIMARY KEY (id)`,
		`RESET maintenance_work_mem`,
		`VACUUM (ANALYZE) accounts`,
		`ANALYZE transfers`,
		`CHECKPOINT`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("postgres: setup: %s: %w", q, err)
		}
	}
	p.pop = pop
	return nil
}

const (
	pgDebitSQL = `UPDATE accounts SET debits_posted = debits_posted + $2 WHERE id = $1
		AND (NOT debits_must_not_exceed_credits OR credits_posted - debits_posted - debits_pending >= $2)`
	pgCreditSQL   = `UPDATE accounts SET credits_posted = credits_posted + $2 WHERE id = $1`
	pgTransferSQL = `INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, created_at)
		VALUES ($1, $2, $3, $4, now()) ON CONFLICT (id) DO NOTHING`
)

// Per-transfer outcomes Do counts with rec.Error.
const (
	PgInsufficientOrNotFound = "INSUFFICIENT_FUNDS_OR_NOT_FOUND"
	PgExists                 = "EXISTS"
)

// Do implements Target: each transfer of the batch is its own SQL transaction on one
// pooled connection, in order (one commit = one WAL flush): BEGIN; the two account
// updates in id order (so concurrent transfers over the same accounts cannot deadlock),
// the debit guarded by the balance check; the transfer row (ON CONFLICT DO NOTHING: a
// repeated id counts EXISTS and rolls back); COMMIT. The three statements go in one
// pipelined round trip. Serialization failures and deadlocks are retried (rec.Retry);
// other server errors count per transfer by SQLSTATE; a connection failure fails the
// request.
func (p *Postgres) Do(ctx context.Context, batch []Transfer, rec *Recorder) error {
	pop := p.pop
	if pop == nil {
		return errors.New("postgres: Setup was not called")
	}
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	for _, t := range batch {
		if t.Amount > 1<<63-1 {
			rec.Error("AMOUNT_OUT_OF_RANGE", 1)
			continue
		}
		for attempt := 0; ; attempt++ {
			outcome, err := p.transfer(ctx, conn.Conn(), pop.IDs[t.Debit], pop.IDs[t.Credit], t)
			if err == nil {
				if outcome != "" {
					rec.Error(outcome, 1)
				}
				break
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || ctx.Err() != nil {
				return err
			}
			if (pe.Code == "40001" || pe.Code == "40P01") && attempt < p.opts.RetryMax {
				rec.Retry()
				continue
			}
			rec.Error(p.KindOf(err), 1)
			break
		}
	}
	return nil
}

// transfer runs one transfer's transaction: outcome "" means committed.
func (p *Postgres) transfer(ctx context.Context, conn *pgx.Conn, debit, credit string, t Transfer) (string, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return "", err
	}
	rollback := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = tx.Rollback(rctx)
		cancel()
	}
	amt := int64(t.Amount)
	b := &pgx.Batch{}
	debitFirst := debit <= credit
	if debitFirst {
		b.Queue(pgDebitSQL, debit, amt)
		b.Queue(pgCreditSQL, credit, amt)
	} else {
		b.Queue(pgCreditSQL, credit, amt)
		b.Queue(pgDebitSQL, debit, amt)
	}
	b.Queue(pgTransferSQL, t.ID, debit, credit, amt)
	br := tx.SendBatch(ctx, b)
	var tags [3]pgconn.CommandTag
	for i := range tags {
		if tags[i], err = br.Exec(); err != nil {
			break
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		rollback()
		return "", err
	}
	debitRows, creditRows := tags[0].RowsAffected(), tags[1].RowsAffected()
	if !debitFirst {
		debitRows, creditRows = creditRows, debitRows
	}
	switch {
	case debitRows != 1 || creditRows != 1:
		rollback()
		return PgInsufficientOrNotFound, nil
	case tags[2].RowsAffected() != 1:
		rollback()
		return PgExists, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return "", err
	}
	return "", nil
}

// CPUSeconds implements Target: the CPU time (user + system) of the PostgreSQL server
// only — the postmaster and its live children (backends, WAL writer, checkpointer, ...)
// from /proc, plus the postmaster's reaped children (closed backends). The benchmark
// client's own CPU (pgx, this process) is not included.
func (p *Postgres) CPUSeconds() float64 {
	if p.pid == 0 {
		return 0
	}
	ticks := uint64(0)
	if s, err := readProcStat(p.pid); err == nil {
		ticks += s.utime + s.stime + s.cutime + s.cstime
	} else {
		return 0
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == p.pid {
			continue
		}
		if s, err := readProcStat(pid); err == nil && s.ppid == p.pid {
			ticks += s.utime + s.stime
		}
	}
	return float64(ticks) / pgClockTicks()
}

type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime uint64
}

// readProcStat parses /proc/<pid>/stat (fields after the parenthesized command name).
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14-17.
	if len(f) < 15 {
		return procStat{}, errors.New("short stat")
	}
	var s procStat
	s.ppid, _ = strconv.Atoi(f[1])
	s.utime, _ = strconv.ParseUint(f[11], 10, 64)
	s.stime, _ = strconv.ParseUint(f[12], 10, 64)
	cu, _ := strconv.ParseInt(f[13], 10, 64)
	cs, _ := strconv.ParseInt(f[14], 10, 64)
	s.cutime, s.cstime = uint64(max(cu, 0)), uint64(max(cs, 0))
	return s, nil
}

// pgClockTicks is sysconf(_SC_CLK_TCK) via getconf, read once (100 when unknown).
var pgClockTicks = sync.OnceValue(func() float64 {
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100 // Linux's USER_HZ
})

// KindOf implements ErrorKind: the SQLSTATE condition name of a server error (the code
// itself when unnamed here), else "error".
func (p *Postgres) KindOf(err error) string {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return "error"
	}
	if n, ok := sqlstateNames[pe.Code]; ok {
		return n
	}
	return "sqlstate_" + pe.Code
}

var sqlstateNames = map[string]string{
	"08000": "connection_exception",
	"08003": "connection_does_not_exist",
	"08006": "connection_failure",
	"22003": "numeric_value_out_of_range",
	"23502": "not_null_violation",
	"23503": "foreign_key_violation",
	"23505": "unique_violation",
	"23514": "check_violation",
	"25P02": "in_failed_sql_transaction",
	"40001": "serialization_failure",
	"40P01": "deadlock_detected",
	"42P01": "undefined_table",
	"53100": "disk_full",
	"53200": "out_of_memory",
	"53300": "too_many_connections",
	"55P03": "lock_not_available",
	"57014": "query_canceled",
	"57P01": "admin_shutdown",
	"57P02": "crash_shutdown",
	"57P03": "cannot_connect_now",
	"58030": "io_error",
}

// Close implements Target: closes the pool, stops the server (pg_ctl stop -m fast,
// bounded; immediate stop, then kill, if that fails) and removes the temp dir.
func (p *Postgres) Close() error {
	p.closeOnce.Do(func() { p.closeErr = p.close() })
	return p.closeErr
}

func (p *Postgres) close() error {
	var errs []error
	if p.pool != nil {
		p.pool.Close()
	}
	if p.cmd != nil {
		if !p.serverExited() {
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			out, err := p.command(ctx, "pg_ctl", "stop", "-D", p.data, "-m", "fast", "-w", "-t", "30").CombinedOutput()
			cancel()
			if err != nil && !p.serverExited() {
				errs = append(errs, fmt.Errorf("postgres: pg_ctl stop: %v: %s", err, bytes.TrimSpace(out)))
			}
		}
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			if p.pid > 0 {
				_ = syscall.Kill(p.pid, syscall.SIGQUIT) // immediate shutdown
			}
			select {
			case <-p.exited:
			case <-time.After(5 * time.Second):
				if p.pid > 0 {
					_ = syscall.Kill(p.pid, syscall.SIGKILL)
				}
				_ = p.cmd.Process.Kill()
				select {
				case <-p.exited:
				case <-time.After(5 * time.Second):
					errs = append(errs, errors.New("postgres: server did not exit"))
				}
			}
		}
	}
	if p.tmp != "" {
		if err := os.RemoveAll(p.tmp); err != nil {
			errs = append(errs, fmt.Errorf("postgres: remove %s: %w", p.tmp, err))
		}
	}
	return errors.Join(errs...)
}

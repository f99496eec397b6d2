package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/shardledger/shardledger/internal/wire"
	"github.com/shardledger/shardledger/ledger"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
	"github.com/shardledger/shardledger/proto/gen/ledger/v1/ledgerv1connect"
)

// LedgerOptions say which ledger to measure.
type LedgerOptions struct {
	// Mode: "dev" starts `ledgerd dev` (3 nodes in one process), "multi" starts three
	// `ledgerd start` processes on loopback, "" uses Addr (a running cluster).
	Mode string
	Addr string
	// Binary is the ledgerd executable (required for dev and multi).
	Binary string
	// Dir holds the started cluster's data (a temp dir when empty; removed on Close).
	Dir string
	// Coordinators is the coordinator group count of a started cluster (default 1).
	Coordinators int
	// RetryMax bounds resends of one request (same ids; safe).
	RetryMax int
	// PopulationExists: the cluster already holds the population's accounts (an earlier
	// run against it created them), so Setup creates nothing. Creating 10 million
	// accounts again (each answered EXISTS) takes minutes.
	PopulationExists bool
}

// Ledger is the ledger over its public Connect API.
type Ledger struct {
	opts   LedgerOptions
	client ledgerv1connect.LedgerServiceClient
	admin  ledgerv1connect.AdminServiceClient
	procs  []*exec.Cmd
	logs   []*os.File
	tmp    string
	pop    *Population
	// slot -> shard from the cluster's map
	slotShard []uint64
	slotCount uint32
	// idleCores is the CPU per process of the started cluster with nothing to do,
	// measured once it is ready (0 when not measured).
	idleCores float64
}

var _ Target = (*Ledger)(nil)

// StartLedger starts (or connects to) a ledger and loads its shard map.
func StartLedger(ctx context.Context, opts LedgerOptions) (*Ledger, error) {
	if opts.RetryMax == 0 {
		opts.RetryMax = 30
	}
	if opts.Coordinators == 0 {
		opts.Coordinators = 1
	}
	l := &Ledger{opts: opts}
	if opts.Mode != "" {
		if err := l.start(ctx); err != nil {
			l.Close()
			return nil, err
		}
	}
	if l.opts.Addr == "" {
		return nil, errors.New("ledger: no address")
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: ConcurrencyMax, MaxConnsPerHost: 0,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext}}
	// Requests are encoded by the generated code (the bytes protobuf's encoder writes);
	// answers are decoded by protobuf's decoder.
	l.client = ledgerv1connect.NewLedgerServiceClient(hc, l.opts.Addr, connect.WithCodec(wire.Codec{}))
	l.admin = ledgerv1connect.NewAdminServiceClient(hc, l.opts.Addr, connect.WithCodec(wire.Codec{}))
	if err := l.loadMap(ctx); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (l *Ledger) start(ctx context.Context) error {
	if l.opts.Binary == "" {
		return errors.New("ledger: a ledgerd binary is required to start a cluster")
	}
	dir := l.opts.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "ledger-bench-*")
		if err != nil {
			return err
		}
		dir, l.tmp = d, d
	}
	api, err := freePort()
	if err != nil {
		return err
	}
	l.opts.Addr = fmt.Sprintf("http://127.0.0.1:%d", api)
	var cmds [][]string
	switch l.opts.Mode {
	case "dev":
		base, err := freePortRun(3)
		if err != nil {
			return err
		}
		cmds = append(cmds, []string{"dev", "--data-dir", filepath.Join(dir, "dev"), "--listen", fmt.Sprintf("127.0.0.1:%d", api),
			"--raft-port-base", strconv.Itoa(base)})
	case "multi":
		base, err := freePortRun(3)
		if err != nil {
			return err
		}
		var members []string
		for i := 1; i <= 3; i++ {
			members = append(members, fmt.Sprintf("%d=127.0.0.1:%d", i, base+i-1))
		}
		for i := 1; i <= 3; i++ {
			args := []string{"start", "--node-id", strconv.Itoa(i), "--raft-addr", fmt.Sprintf("127.0.0.1:%d", base+i-1),
				"--members", strings.Join(members, ","), "--data-dir", filepath.Join(dir, fmt.Sprintf("n%d", i)),
				"--coordinators", strconv.Itoa(l.opts.Coordinators), "--rtt-ms", "20"}
			if i == 1 {
				args = append(args, "--listen", fmt.Sprintf("127.0.0.1:%d", api))
			}
			cmds = append(cmds, args)
		}
	default:
		return fmt.Errorf("ledger: unknown mode %q (dev, multi)", l.opts.Mode)
	}
	for i, args := range cmds {
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("ledgerd-%d.log", i+1)))
		if err != nil {
			return err
		}
		cmd := exec.Command(l.opts.Binary, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			return fmt.Errorf("start ledgerd: %w", err)
		}
		l.procs, l.logs = append(l.procs, cmd), append(l.logs, logf)
	}
	if err := l.waitReady(ctx, dir); err != nil {
		return err
	}
	return l.measureIdle(ctx)
}

// Idle measurement of a started cluster: its heartbeats alone cost more CPU on some
// machines than others (0.05 cores in the dev cluster on one VM, 0.2 on another, where
// a fixed threshold of 0.15 made every run wait out WaitIdle's limit).
const (
	idleBaselineWindow = 2 * time.Second
	// IdleMargin is how much CPU per process above the cluster's measured idle still
	// counts as idle.
	IdleMargin = 0.1
	// idleBaselineMax caps the measured idle (a start still settling must not make
	// any load count as idle).
	idleBaselineMax = 0.5
)

// IdleThreshold is the CPU per process under which WaitIdle takes the cluster as idle:
// idleCores, or the cluster's own idle plus IdleMargin when that is more.
func (l *Ledger) IdleThreshold(idleCores float64) float64 {
	return max(idleCores, l.idleCores+IdleMargin)
}

// measureIdle records the CPU per process of the cluster, just started and ready.
func (l *Ledger) measureIdle(ctx context.Context) error {
	c0 := l.CPUSeconds()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(idleBaselineWindow):
	}
	l.idleCores = min((l.CPUSeconds()-c0)/idleBaselineWindow.Seconds()/float64(len(l.procs)), idleBaselineMax)
	return nil
}

func freePortRun(n int) (int, error) {
	for base := 30000 + os.Getpid()%20000; base < 60000; base += n + 7 {
		var ls []net.Listener
		ok := true
		for i := 0; i < n; i++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, ln)
		}
		for _, ln := range ls {
			ln.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, errors.New("no free port run")
}

func (l *Ledger) waitReady(ctx context.Context, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	admin := ledgerv1connect.NewAdminServiceClient(http.DefaultClient, l.opts.Addr)
	for {
		if _, err := admin.GetShardMap(ctx, connect.NewRequest(&ledgerv1.GetShardMapRequest{})); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ledger did not become ready (logs in %s): %w", dir, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (l *Ledger) loadMap(ctx context.Context) error {
	res, err := l.admin.GetShardMap(ctx, connect.NewRequest(&ledgerv1.GetShardMapRequest{}))
	if err != nil {
		return fmt.Errorf("ledger: shard map: %w", err)
	}
	l.slotCount = res.Msg.SlotCount
	l.slotShard = make([]uint64, res.Msg.SlotCount)
	for _, r := range res.Msg.Ranges {
		for s := r.Start; s < r.End && s < res.Msg.SlotCount; s++ {
			l.slotShard[s] = r.ShardId
		}
	}
	return nil
}

// ShardOf places an account id as the cluster does.
func (l *Ledger) ShardOf(id string) uint64 { return l.slotShard[ledger.SlotOf(id, l.slotCount)] }

// Name implements Target.
func (l *Ledger) Name() string { return "ledger" }

// Addr is the API address.
func (l *Ledger) Addr() string { return l.opts.Addr }

// Setup creates the population's accounts (no overdraft limits, so transfers never
// fail for funds), 8,000 per request, 4 requests at a time.
func (l *Ledger) Setup(ctx context.Context, p *Population) error {
	l.pop = p
	if l.opts.PopulationExists {
		return nil
	}
	const chunk = 8000
	sem := make(chan struct{}, 4)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for i := 0; i < len(p.IDs); i += chunk {
		req := &ledgerv1.CreateAccountsRequest{}
		for _, id := range p.IDs[i:min(i+chunk, len(p.IDs))] {
			req.Accounts = append(req.Accounts, &ledgerv1.Account{Id: id, Currency: "USD"})
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			var err error
			for attempt := 0; attempt < l.opts.RetryMax; attempt++ {
				var res *connect.Response[ledgerv1.CreateAccountsResponse]
				if res, err = l.client.CreateAccounts(ctx, connect.NewRequest(req)); err == nil {
					for _, r := range res.Msg.Results {
						if r.Status != ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED && r.Status != ledgerv1.AccountStatus_ACCOUNT_STATUS_EXISTS {
							err = fmt.Errorf("account %s: %v %s", r.Id, r.Status, r.Message)
						}
					}
					break
				}
				if !retryableCode(connect.CodeOf(err)) {
					break
				}
				time.Sleep(backoff(attempt))
			}
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func retryableCode(c connect.Code) bool {
	return c == connect.CodeUnavailable || c == connect.CodeDeadlineExceeded || c == connect.CodeResourceExhausted
}

func backoff(attempt int) time.Duration {
	return min(10*time.Millisecond<<min(attempt, 6), time.Second)
}

// Do sends one CreateTransfers request, resending it (same ids) on retryable errors.
func (l *Ledger) Do(ctx context.Context, batch []Transfer, rec *Recorder) error {
	req := &ledgerv1.CreateTransfersRequest{Transfers: make([]*ledgerv1.Transfer, len(batch))}
	for i, t := range batch {
		req.Transfers[i] = &ledgerv1.Transfer{Id: t.ID, DebitAccountId: l.pop.IDs[t.Debit],
			CreditAccountId: l.pop.IDs[t.Credit], Amount: t.Amount, Currency: "USD"}
	}
	var err error
	for attempt := 0; attempt < l.opts.RetryMax; attempt++ {
		if attempt > 0 {
			rec.Retry()
			time.Sleep(backoff(attempt))
		}
		var res *connect.Response[ledgerv1.CreateTransfersResponse]
		res, err = l.client.CreateTransfers(ctx, connect.NewRequest(req))
		if err == nil {
			for _, r := range res.Msg.Results {
				if r.Status != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED && r.Status != ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS {
					rec.Error(strings.TrimPrefix(r.Status.String(), "TRANSFER_STATUS_"), 1)
				}
			}
			return nil
		}
		if !retryableCode(connect.CodeOf(err)) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// KindOf names a request error by its Connect code.
func (l *Ledger) KindOf(err error) string { return connect.CodeOf(err).String() }

// CPUSeconds is the started processes' CPU time (0 for a cluster started elsewhere).
func (l *Ledger) CPUSeconds() float64 {
	var s float64
	for _, p := range l.procs {
		if p.Process != nil {
			s += ProcCPUSeconds(p.Process.Pid)
		}
	}
	return s
}

// WaitIdle waits until the started cluster is idle: its processes used less than
// idleCores of CPU each (on average) over one window, so a workload does not start
// while the work of creating its population still runs. Per process: an idle
// multi-process cluster uses about 0.07 cores in each of its three processes (0.20 in
// all, measured), more than the one process of an idle dev cluster (0.05), and a
// threshold for the whole cluster made every multi run wait out limit. (Idle is not
// settled: compaction debt the bulk load left is paid once writes resume.) The threshold
// is at least the cluster's own idle CPU, measured when it started, plus IdleMargin:
// heartbeats alone cost 0.2 cores on some VMs. It returns how long it waited and
// whether the cluster went idle before limit. A cluster started elsewhere is taken as
// idle.
func (l *Ledger) WaitIdle(ctx context.Context, idleCores float64, window, limit time.Duration) (time.Duration, bool, error) {
	if len(l.procs) == 0 {
		return 0, true, nil
	}
	idleCores = l.IdleThreshold(idleCores)
	t0 := time.Now()
	for time.Since(t0) < limit {
		c0 := l.CPUSeconds()
		select {
		case <-ctx.Done():
			return time.Since(t0), false, ctx.Err()
		case <-time.After(window):
		}
		if l.CPUSeconds()-c0 < idleCores*float64(len(l.procs))*window.Seconds() {
			return time.Since(t0), true, nil
		}
	}
	return time.Since(t0), false, nil
}

// Close stops started processes and removes their temp dir.
func (l *Ledger) Close() error {
	for _, p := range l.procs {
		if p.Process != nil {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range l.procs {
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	for _, f := range l.logs {
		f.Close()
	}
	l.procs, l.logs = nil, nil
	if l.tmp != "" {
		return os.RemoveAll(l.tmp)
	}
	return nil
}

// ProcCPUSeconds reads a process's user+system CPU time from /proc (0 if unreadable).
func ProcCPUSeconds(pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	// Fields after the command name (which may contain spaces) start after ") ".
	i := strings.LastIndex(line, ") ")
	if i < 0 {
		return 0
	}
	fields := strings.Fields(line[i+2:])
	if len(fields) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (ut + st) / clockTicks
}

// clockTicks is USER_HZ, 100 on Linux.
const clockTicks = 100

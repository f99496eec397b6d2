package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/shardledger/shardledger/coordinator"
	"github.com/shardledger/shardledger/internal/faultnet"
	"github.com/shardledger/shardledger/meta"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Fault tests: 3 NodeHosts in one process on an in-process transport that can cut links,
// under concurrent cross-shard load. Each ends with every transaction decided and every
// branch resolved within a bounded time, the audit clean, no acknowledged transfer lost
// and none applied twice.

type faultCluster struct {
	*testCluster
	net   *faultnet.Net
	addrs []string
}

func startFaultCluster(t *testing.T, mutate func(*Config)) *faultCluster {
	t.Helper()
	net := faultnet.New()
	name := strings.ToLower(t.Name()) // dragonboat normalizes addresses to lower case
	addrs := []string{name + "-n1:1", name + "-n2:1", name + "-n3:1"}
	tc := startClusterWith(t, t.TempDir(), addrs, func(c *Config) {
		c.TransportFactory = net.Factory()
		if mutate != nil {
			mutate(c)
		}
	})
	return &faultCluster{testCluster: tc, net: net, addrs: addrs}
}

// leaderOf returns the index of the node leading a group.
func (fc *faultCluster) leaderOf(t *testing.T, group uint64) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for i, b := range fc.Backends() {
			if n := b.Node(); n != nil && n.Leads(group) {
				return i
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no leader for group %d", group)
	return -1
}

// load runs workers sending cross-shard transfers (shard 1 -> shard 3), each id retried
// until it has an outcome.
type load struct {
	tried, acked sync.Map // id -> amount
	failed       sync.Map // id -> status (a final failure, e.g. TIMED_OUT)
	stop         atomic.Bool
	n            atomic.Int64
	wg           sync.WaitGroup
	from, to     []string
}

func startLoad(t *testing.T, tc *testCluster, prefix string, workers int) *load {
	l := &load{from: idsOnShard(prefix+"-a", 1, 4), to: idsOnShard(prefix+"-b", 3, 4)}
	createAccounts(t, tc.client, append(append([]string{}, l.from...), l.to...), false)
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; !l.stop.Load(); i++ {
				id := fmt.Sprintf("%s-w%d-%d", prefix, w, i)
				amt := uint64(i%5 + 1)
				tr := transfer(id, l.from[(w+i)%len(l.from)], l.to[(w*3+i)%len(l.to)], amt)
				l.tried.Store(id, amt)
				for attempt := 0; attempt < 200 && !l.stop.Load(); attempt++ { // an id left unacked stays in tried
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					res, err := tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{tr}}))
					cancel()
					if err != nil {
						time.Sleep(25 * time.Millisecond)
						continue
					}
					switch s := res.Msg.Results[0].Status; s {
					case ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED, ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS:
						l.acked.Store(id, amt)
						l.n.Add(1)
					default:
						l.failed.Store(id, s)
					}
					break
				}
			}
		}()
	}
	return l
}

func (l *load) finish() { l.stop.Store(true); l.wg.Wait() }

// waitAcked waits until at least n more transfers are acknowledged.
func (l *load) waitAcked(t *testing.T, n int64) {
	t.Helper()
	target := l.n.Load() + n
	deadline := time.Now().Add(30 * time.Second)
	for l.n.Load() < target {
		if time.Now().After(deadline) {
			t.Fatalf("load stalled at %d acked transfers (want %d)", l.n.Load(), target)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// verify checks, at quiescence: every acked transfer present; every transfer present
// counted exactly once in the balances; audit clean.
func (l *load) verify(t *testing.T, tc *testCluster) {
	t.Helper()
	waitQuiescent(t, tc)
	var ids []string
	l.tried.Range(func(k, _ any) bool { ids = append(ids, k.(string)); return true })
	present := map[string]bool{}
	for i := 0; i < len(ids); i += 1000 {
		res, err := tc.client.GetTransfers(context.Background(), connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: ids[i:min(i+1000, len(ids))]}))
		if err != nil {
			t.Fatal(err)
		}
		for _, tr := range res.Msg.Transfers {
			present[tr.Id] = true
		}
	}
	var sum uint64
	l.tried.Range(func(k, v any) bool {
		if present[k.(string)] {
			sum += v.(uint64)
		}
		return true
	})
	lost := 0
	l.acked.Range(func(k, _ any) bool {
		if !present[k.(string)] {
			lost++
			t.Errorf("acknowledged transfer %s lost", k)
		}
		return true
	})
	l.failed.Range(func(k, v any) bool {
		if present[k.(string)] {
			t.Errorf("transfer %s answered %v but was applied", k, v)
		}
		return true
	})
	accs := getAccounts(t, tc.client, append(append([]string{}, l.from...), l.to...))
	var debits, credits, pending uint64
	for _, a := range accs {
		debits += a.DebitsPosted
		credits += a.CreditsPosted
		pending += a.DebitsPending + a.CreditsPending
	}
	if debits != sum || credits != sum || pending != 0 {
		t.Fatalf("debits %d, credits %d, pending %d; transfers present sum to %d: applied twice or lost", debits, credits, pending, sum)
	}
	var acked, failed int
	l.acked.Range(func(_, _ any) bool { acked++; return true })
	l.failed.Range(func(_, _ any) bool { failed++; return true })
	t.Logf("%d transfers tried, %d acknowledged, %d failed finally, %d present", len(ids), acked, failed, len(present))
}

// killHook returns agent options whose driver blocks (until stopped) before resolving
// branches on the node named by victim, reporting the first txn it holds.
func killHook(victim *atomic.Uint64, reached chan<- string) func(uint64) AgentOptions {
	return func(id uint64) AgentOptions {
		block := func(ctx context.Context, txn string) {
			if victim.Load() != id {
				return
			}
			select {
			case reached <- txn:
			default:
			}
			<-ctx.Done()
		}
		return AgentOptions{
			Driver:   coordinator.DriverOptions{Tick: 10 * time.Millisecond, RecoverAfter: time.Second, Hooks: coordinator.Hooks{BeforeResolve: block}},
			Resolver: coordinator.ResolverOptions{InquireAfter: 3 * time.Second, Interval: 200 * time.Millisecond},
		}
	}
}

// TestCoordinatorLeaderKilledBeforeDecision: a transaction's branches are prepared and
// the router is held before logging its decision; the coordinator leader is killed;
// let go, the router logs the decision with the new leader.
func TestCoordinatorLeaderKilledBeforeDecision(t *testing.T) {
	var hold atomic.Bool
	reached := make(chan string, 1)
	release := make(chan struct{})
	fc := startFaultCluster(t, func(c *Config) {
		c.Router.BeforeDecide = func(ctx context.Context, txn string) error {
			if !hold.CompareAndSwap(true, false) {
				return nil
			}
			reached <- txn
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		c.Agents = AgentOptions{Resolver: coordinator.ResolverOptions{InquireAfter: 3 * time.Second, Interval: 200 * time.Millisecond}}
	})
	l := startLoad(t, fc.testCluster, "k", 6)
	l.waitAcked(t, 50)
	hold.Store(true)
	var held string
	select {
	case held = <-reached:
	case <-time.After(20 * time.Second):
		t.Fatal("no transaction reached its decision point")
	}
	leader := fc.leaderOf(t, meta.CoordinatorGroupBase)
	fc.StopNode(leader)
	t.Logf("killed coordinator leader node %d while txn %s is prepared and undecided", leader+1, held)
	close(release)
	l.waitAcked(t, 50) // the new leader takes the held decision and new transactions
	l.finish()
	l.verify(t, fc.testCluster)
	if err := fc.StartNode(leader); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, fc.Local)
}

// TestCoordinatorLeaderKilledAfterDecision: the coordinator leader's driver is held
// after a commit decision, before committing the branches, and its node is killed; the
// new leader commits them.
func TestCoordinatorLeaderKilledAfterDecision(t *testing.T) {
	var victim atomic.Uint64
	reached := make(chan string, 1)
	fc := startFaultCluster(t, func(c *Config) {
		c.AgentsFor = killHook(&victim, reached)
		// The router leaves every commit to the driver (as it does without room to
		// finish them itself), so the driver holds some when its node is killed.
		c.Router.BeforeFinish = func(string) error { return errors.New("left to the driver (test)") }
	})
	l := startLoad(t, fc.testCluster, "k", 6)
	l.waitAcked(t, 50)
	leader := fc.leaderOf(t, meta.CoordinatorGroupBase)
	victim.Store(uint64(leader + 1))
	var held string
	select {
	case held = <-reached:
	case <-time.After(20 * time.Second):
		t.Fatal("the coordinator leader's driver never reached the hook")
	}
	fc.StopNode(leader) // its driver stops where it is: the commits never sent
	victim.Store(0)
	t.Logf("killed coordinator leader node %d holding txn %s", leader+1, held)
	l.waitAcked(t, 50) // the new leader drives old and new transactions
	l.finish()
	l.verify(t, fc.testCluster)
	res, err := fc.client.GetTransfers(context.Background(), connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: []string{held}}))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Msg.Transfers) != 1 {
		t.Fatalf("txn %s was decided (commit) before the kill but is not present", held)
	}
	if err := fc.StartNode(leader); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, fc.Local)
}

func TestCoordinatorLeaderPartitionedThenHealed(t *testing.T) {
	fc := startFaultCluster(t, nil)
	l := startLoad(t, fc.testCluster, "p", 6)
	l.waitAcked(t, 50)
	leader := fc.leaderOf(t, meta.CoordinatorGroupBase)
	var others []string
	for i, a := range fc.addrs {
		if i != leader {
			others = append(others, a)
		}
	}
	fc.net.Cut(fc.addrs[leader], others...)
	t.Logf("cut coordinator leader node %d off", leader+1)
	l.waitAcked(t, 50) // the majority side elects a leader and goes on
	time.Sleep(500 * time.Millisecond)
	fc.net.Heal()
	l.waitAcked(t, 20)
	l.finish()
	l.verify(t, fc.testCluster)
	waitConverged(t, fc.Local)
}

func TestParticipantShardLeaderKilledDuringPrepare(t *testing.T) {
	fc := startFaultCluster(t, nil)
	l := startLoad(t, fc.testCluster, "s", 6)
	l.waitAcked(t, 50)
	leader := fc.leaderOf(t, 3) // the credit side's shard
	fc.StopNode(leader)
	t.Logf("killed shard 3 leader node %d", leader+1)
	l.waitAcked(t, 50)
	l.finish()
	l.verify(t, fc.testCluster)
	if err := fc.StartNode(leader); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, fc.Local)
}

func TestResponseLostAfterDecisionRetryExists(t *testing.T) {
	var dropped sync.Map
	fc := startFaultCluster(t, func(c *Config) {
		c.Router.AfterDecision = func(txn string) error {
			if _, again := dropped.LoadOrStore(txn, true); !again && strings.HasPrefix(txn, "lost-") {
				return connect.NewError(connect.CodeUnavailable, errors.New("response lost (test)"))
			}
			return nil
		}
	})
	a, b := idsOnShard("lost-a", 1, 1)[0], idsOnShard("lost-b", 3, 1)[0]
	createAccounts(t, fc.client, []string{a, b}, false)
	for i := 0; i < 5; i++ {
		tr := transfer(fmt.Sprintf("lost-%d", i), a, b, 7)
		_, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{tr}}))
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Fatalf("first send of %s: want the lost response, got %v", tr.Id, err)
		}
		res, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{tr}}))
		if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS {
			t.Fatalf("retry of %s: want EXISTS, got %v %v", tr.Id, res, err)
		}
	}
	waitQuiescent(t, fc.testCluster)
	accs := getAccounts(t, fc.client, []string{a, b})
	if accs[a].DebitsPosted != 35 || accs[b].CreditsPosted != 35 {
		t.Fatalf("applied other than once: %v %v", accs[a], accs[b])
	}
}

func TestPendingExpiresWhileCoordinatorLeaderDown(t *testing.T) {
	fc := startFaultCluster(t, nil)
	l := startLoad(t, fc.testCluster, "e", 4)
	a, b := idsOnShard("exp-a", 1, 1)[0], idsOnShard("exp-b", 3, 1)[0]
	createAccounts(t, fc.client, []string{a, b}, false)
	p := transfer("exp-1", a, b, 25)
	p.Pending, p.TimeoutSeconds = true, 1
	res, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{p}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
		t.Fatalf("try: %v %v", res, err)
	}
	if accs := getAccounts(t, fc.client, []string{a}); accs[a].DebitsPending != 25 {
		t.Fatalf("not reserved: %v", accs[a])
	}
	leader := fc.leaderOf(t, meta.CoordinatorGroupBase)
	fc.StopNode(leader)
	t.Logf("stopped coordinator leader node %d; the pending transfer expires in 1 s", leader+1)
	deadline := time.Now().Add(20 * time.Second)
	for {
		accs := getAccounts(t, fc.client, []string{a, b})
		if accs[a].DebitsPending == 0 && accs[b].CreditsPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reservation not released after expiry: %v %v", accs[a], accs[b])
		}
		time.Sleep(50 * time.Millisecond)
	}
	res, err = fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{{Id: "exp-1-post", PostPendingId: "exp-1"}}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_EXPIRED {
		t.Fatalf("post after expiry: %v %v", res, err)
	}
	gt, err := fc.client.GetTransfers(context.Background(), connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: []string{"exp-1"}}))
	if err != nil || len(gt.Msg.Transfers) != 1 || gt.Msg.Transfers[0].State != ledgerv1.TransferState_TRANSFER_STATE_EXPIRED {
		t.Fatalf("expired transfer: %v %v", gt, err)
	}
	l.finish()
	l.verify(t, fc.testCluster)
	if err := fc.StartNode(leader); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, fc.Local)
}

// dieOnce is a router hook that fails (the router "dies", unavailable) for the first
// transaction whose id has the prefix, and lets everything else through.
func dieOnce(prefix, msg string) func(ctx context.Context, txnID string) error {
	var died atomic.Bool
	return func(_ context.Context, txnID string) error {
		if !strings.HasPrefix(txnID, prefix) || died.Swap(true) {
			return nil
		}
		return connect.NewError(connect.CodeUnavailable, errors.New(msg))
	}
}

// TestParticipantInquiryAbortsUnbegun: the router "dies" before logging the Begin (its
// branches are prepared, no record exists): the participants' resolver finds its
// branches prepared too long, asks the coordinator, which logs an abort tombstone; the
// retry reads that abort.
func TestParticipantInquiryAbortsUnbegun(t *testing.T) {
	fc := startFaultCluster(t, func(c *Config) {
		c.Router.BeforeBegin = dieOnce("inq-", "router died before the Begin (test)")
		c.Agents = AgentOptions{
			Driver:   coordinator.DriverOptions{Tick: 10 * time.Millisecond},
			Resolver: coordinator.ResolverOptions{InquireAfter: time.Second, Interval: 100 * time.Millisecond},
		}
	})
	a, b := idsOnShard("inq-a", 1, 1)[0], idsOnShard("inq-b", 3, 1)[0]
	createAccounts(t, fc.client, []string{a, b}, false)
	_, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{transfer("inq-1", a, b, 9)}}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("want the router's death, got %v", err)
	}
	if accs := getAccounts(t, fc.client, []string{a, b}); accs[a].DebitsPending != 9 || accs[b].CreditsPending != 9 {
		t.Fatalf("the branches were not prepared: %v %v", accs[a], accs[b])
	}
	waitQuiescent(t, fc.testCluster) // the inquiry's tombstone, then the branches released
	accs := getAccounts(t, fc.client, []string{a, b})
	if accs[a].DebitsPosted != 0 || accs[a].DebitsPending != 0 || accs[b].CreditsPosted != 0 || accs[b].CreditsPending != 0 {
		t.Fatalf("an aborted transfer moved money: %v %v", accs[a], accs[b])
	}
	res, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{transfer("inq-1", a, b, 9)}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT {
		t.Fatalf("the retry must read the abort: %v %v", res, err)
	}
	waitQuiescent(t, fc.testCluster)
	gt, err := fc.client.GetTransfers(context.Background(), connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: []string{"inq-1"}}))
	if err != nil || len(gt.Msg.Transfers) != 0 {
		t.Fatalf("an aborted transfer reads as present: %v %v", gt, err)
	}
	if accs := getAccounts(t, fc.client, []string{a, b}); accs[a].DebitsPending != 0 || accs[b].CreditsPending != 0 {
		t.Fatalf("the retry left money reserved: %v %v", accs[a], accs[b])
	}
}

// TestRouterDiesAfterStaging: the router "dies" once the Begin is logged and every
// branch prepared, before answering or logging the decision. The transaction is
// committed by then: the coordinator's driver (or an inquiry) logs that commit; the
// client's retry answers EXISTS and the money moved once.
func TestRouterDiesAfterStaging(t *testing.T) {
	fc := startFaultCluster(t, func(c *Config) {
		c.Router.BeforeDecide = dieOnce("stg-", "router died after staging (test)")
		c.Agents = AgentOptions{
			Driver:   coordinator.DriverOptions{Tick: 10 * time.Millisecond, RecoverAfter: 500 * time.Millisecond},
			Resolver: coordinator.ResolverOptions{InquireAfter: 5 * time.Second, Interval: 100 * time.Millisecond},
		}
	})
	a, b := idsOnShard("stg-a", 2, 1)[0], idsOnShard("stg-b", 4, 1)[0]
	createAccounts(t, fc.client, []string{a, b}, false)
	_, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{transfer("stg-1", a, b, 11)}}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("want the router's death, got %v", err)
	}
	// At once (before the driver's RecoverAfter): a reader settles the staged
	// transaction and finds it committed.
	gt, err := fc.client.GetTransfers(context.Background(), connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: []string{"stg-1"}}))
	if err != nil || len(gt.Msg.Transfers) != 1 {
		t.Fatalf("a committed transfer must read as present: %v %v", gt, err)
	}
	waitQuiescent(t, fc.testCluster)
	accs := getAccounts(t, fc.client, []string{a, b})
	if accs[a].DebitsPosted != 11 || accs[b].CreditsPosted != 11 || accs[a].DebitsPending != 0 || accs[b].CreditsPending != 0 {
		t.Fatalf("a staged transfer was not committed exactly once: %v %v", accs[a], accs[b])
	}
	res, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{transfer("stg-1", a, b, 11)}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS {
		t.Fatalf("the retry must answer EXISTS: %v %v", res, err)
	}
}

// TestSlowRouterKeepsItsTransactions: a router slower than the driver's RecoverAfter
// (as under load) owns the transactions it began until its request's deadline: the
// coordinator's driver does not prepare and decide them a second time. One whose router
// gave up (here: died after staging) is recovered by the driver once that deadline has
// passed, without a retry or a reader.
func TestSlowRouterKeepsItsTransactions(t *testing.T) {
	const requestTimeout = 3 * time.Second
	var recovered sync.Map // txn id -> when the driver decided it
	fc := startFaultCluster(t, func(c *Config) {
		c.Router.RequestTimeout = requestTimeout
		c.Router.BeforeDecide = func(ctx context.Context, txnID string) error {
			switch {
			case strings.HasPrefix(txnID, "slow-"):
				time.Sleep(time.Second) // past RecoverAfter, well inside the deadline
			case strings.HasPrefix(txnID, "dead-"):
				return connect.NewError(connect.CodeUnavailable, errors.New("router died after staging (test)"))
			}
			return nil
		}
		c.Agents = AgentOptions{
			Driver: coordinator.DriverOptions{Tick: 10 * time.Millisecond, RecoverAfter: 200 * time.Millisecond,
				Hooks: coordinator.Hooks{BeforeDecide: func(_ context.Context, txnID string) { recovered.LoadOrStore(txnID, time.Now()) }}},
			Resolver: coordinator.ResolverOptions{InquireAfter: time.Minute, Interval: 100 * time.Millisecond},
		}
	})
	a, b := idsOnShard("srk-a", 2, 1)[0], idsOnShard("srk-b", 4, 1)[0]
	createAccounts(t, fc.client, []string{a, b}, false)

	res, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{transfer("slow-1", a, b, 5)}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
		t.Fatalf("slow router: %v %v", res, err)
	}
	if _, ok := recovered.Load("slow-1"); ok {
		t.Fatal("the driver recovered a transaction its (slow, live) router was deciding")
	}

	start := time.Now()
	_, err = fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{transfer("dead-1", a, b, 7)}}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("want the router's death, got %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	var at time.Time
	for {
		if v, ok := recovered.Load("dead-1"); ok {
			at = v.(time.Time)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the driver never recovered the dead router's transaction")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if waited := at.Sub(start); waited < requestTimeout {
		t.Fatalf("the driver recovered the transaction %v after the request started, before the router's deadline (%v)", waited, requestTimeout)
	}
	waitQuiescent(t, fc.testCluster)
	accs := getAccounts(t, fc.client, []string{a, b})
	if accs[a].DebitsPosted != 12 || accs[b].CreditsPosted != 12 || accs[a].DebitsPending != 0 || accs[b].CreditsPending != 0 {
		t.Fatalf("both transfers must be committed once: %v %v", accs[a], accs[b])
	}
	if _, ok := recovered.Load("slow-1"); ok {
		t.Fatal("the driver recovered the slow router's transaction after all")
	}
}

// TestRouterFinishesCommits: a router commits the branches of the transactions it
// answered and closes their records itself (decision and forget in one command), with
// no work for the coordinator's driver. A router that dies after committing the
// branches, before closing the record, leaves it to the driver after its deadline: the
// branches' COMMITTED states call for the commit. A router that cannot commit them
// logs the plain decision and the driver commits them.
func TestRouterFinishesCommits(t *testing.T) {
	const requestTimeout = 3 * time.Second
	var decided, resolved sync.Map // txn id -> when the driver decided / resolved it
	fc := startFaultCluster(t, func(c *Config) {
		c.Router.RequestTimeout = requestTimeout
		c.Router.BeforeFinish = func(txnID string) error {
			if strings.HasPrefix(txnID, "nofinish-") {
				return errors.New("no room to finish (test)")
			}
			return nil
		}
		c.Router.BeforeClose = func(txnID string) error {
			if strings.HasPrefix(txnID, "closedead-") {
				return errors.New("router died after committing the branches (test)")
			}
			return nil
		}
		c.Agents = AgentOptions{
			Driver: coordinator.DriverOptions{Tick: 10 * time.Millisecond, RecoverAfter: 200 * time.Millisecond,
				Hooks: coordinator.Hooks{
					BeforeDecide:  func(_ context.Context, txnID string) { decided.LoadOrStore(txnID, time.Now()) },
					BeforeResolve: func(_ context.Context, txnID string) { resolved.LoadOrStore(txnID, time.Now()) },
				}},
			Resolver: coordinator.ResolverOptions{InquireAfter: time.Minute, Interval: 100 * time.Millisecond},
		}
	})
	a, b := idsOnShard("rfc-a", 2, 1)[0], idsOnShard("rfc-b", 4, 1)[0]
	createAccounts(t, fc.client, []string{a, b}, false)
	send := func(id string, amount uint64) time.Time {
		t.Helper()
		start := time.Now()
		res, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{
			Transfers: []*ledgerv1.Transfer{transfer(id, a, b, amount)}}))
		if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
			t.Fatalf("%s: %v %v", id, res, err)
		}
		return start
	}
	waitPosted := func(debits uint64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			accs := getAccounts(t, fc.client, []string{a, b})
			if accs[a].DebitsPosted == debits && accs[b].CreditsPosted == debits && accs[a].DebitsPending == 0 && accs[b].CreditsPending == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("want %d posted and nothing pending: %v %v", debits, accs[a], accs[b])
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	send("fin-1", 5)
	waitQuiescent(t, fc.testCluster) // closed: nothing open, nothing prepared
	waitPosted(5)
	for _, m := range []*sync.Map{&decided, &resolved} {
		if _, ok := m.Load("fin-1"); ok {
			t.Fatal("the driver worked on a transaction its router finished")
		}
	}

	send("nofinish-1", 7)
	waitQuiescent(t, fc.testCluster)
	waitPosted(12)
	if _, ok := resolved.Load("nofinish-1"); !ok {
		t.Fatal("the driver did not commit the branches its router left to it")
	}

	start := send("closedead-1", 11)
	waitPosted(23) // the branches are committed at once, before anything is logged
	var v any
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var ok bool
		if v, ok = decided.Load("closedead-1"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the driver never decided the transaction its router left undecided")
		}
	}
	waitQuiescent(t, fc.testCluster)
	if waited := v.(time.Time).Sub(start); waited < requestTimeout {
		t.Fatalf("the driver recovered the transaction %v after the request started, before the router's deadline (%v)", waited, requestTimeout)
	}
	waitPosted(23) // committed once
	for _, id := range []string{"fin-1", "nofinish-1", "closedead-1"} {
		gt, err := fc.client.GetTransfers(context.Background(), connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: []string{id}}))
		if err != nil || len(gt.Msg.Transfers) != 1 {
			t.Fatalf("%s is not readable as a committed transfer: %v %v", id, gt, err)
		}
	}
}

// TestFinishingKeepsItsSlot: a transaction answered as committed keeps its router slot
// (TxnInflightMax) until the router has finished it, so under overload new requests
// wait for that follow-up work instead of starving it.
func TestFinishingKeepsItsSlot(t *testing.T) {
	release := make(chan struct{})
	fc := startFaultCluster(t, func(c *Config) {
		c.Router.TxnInflightMax = 1
		c.Router.TxnAdmitWaitMax = 300 * time.Millisecond
		c.Router.BeforeFinish = func(txnID string) error {
			if txnID == "held-1" {
				<-release
			}
			return nil
		}
	})
	a, b := idsOnShard("fks-a", 2, 1)[0], idsOnShard("fks-b", 4, 1)[0]
	createAccounts(t, fc.client, []string{a, b}, false)
	send := func(id string) error {
		res, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{
			Transfers: []*ledgerv1.Transfer{transfer(id, a, b, 1)}}))
		if err == nil && res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
			t.Fatalf("%s: %v", id, res.Msg.Results[0])
		}
		return err
	}
	if err := send("held-1"); err != nil {
		t.Fatalf("held-1: %v", err)
	}
	if err := send("next-1"); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("a request while the only slot is finishing: want resource_exhausted, got %v", err)
	}
	close(release)
	deadline := time.Now().Add(20 * time.Second)
	for send("next-2") != nil {
		if time.Now().After(deadline) {
			t.Fatal("the slot never came back after the finishing")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitQuiescent(t, fc.testCluster)
	accs := getAccounts(t, fc.client, []string{a, b})
	if accs[a].DebitsPosted != 2 || accs[b].CreditsPosted != 2 {
		t.Fatalf("want held-1 and next-2 posted, next-1 not: %v %v", accs[a], accs[b])
	}
}

// TestIntraShardPendingExpiresByItself: nobody touches an expired intra-shard pending
// transfer; the shard leader's resolver releases it.
func TestIntraShardPendingExpiresByItself(t *testing.T) {
	fc := startFaultCluster(t, nil)
	ids := idsOnShard("ipe", 2, 2)
	createAccounts(t, fc.client, ids, false)
	p := transfer("ipe-1", ids[0], ids[1], 12)
	p.Pending, p.TimeoutSeconds = true, 1
	res, err := fc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{p}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
		t.Fatalf("pending: %v %v", res, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		gt, err := fc.client.GetTransfers(context.Background(), connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: []string{"ipe-1"}}))
		if err == nil && len(gt.Msg.Transfers) == 1 && gt.Msg.Transfers[0].State == ledgerv1.TransferState_TRANSFER_STATE_EXPIRED {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pending transfer not expired: %v %v", gt, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	accs := getAccounts(t, fc.client, ids)
	if accs[ids[0]].DebitsPending != 0 || accs[ids[1]].CreditsPending != 0 {
		t.Fatalf("reservation not released: %v %v", accs[ids[0]], accs[ids[1]])
	}
	waitQuiescent(t, fc.testCluster)
}

// TestRoutersDieAtRandomUnderLoad: under concurrent cross-shard load, the router "dies"
// at random before a transaction's Begin (branches prepared, no record) or after it is
// staged (begun, every branch prepared, no answer, no decision). Clients retry with the
// same ids. At quiescence: every acknowledged transfer is present, every final failure
// absent, money moved exactly once per present transfer, nothing in doubt.
func TestRoutersDieAtRandomUnderLoad(t *testing.T) {
	var n, deaths atomic.Uint64
	die := func(every uint64, what string) func(context.Context, string) error {
		return func(context.Context, string) error {
			if n.Add(1)%every != 0 {
				return nil
			}
			deaths.Add(1)
			return connect.NewError(connect.CodeUnavailable, errors.New("router died "+what+" (test)"))
		}
	}
	fc := startFaultCluster(t, func(c *Config) {
		c.Router.BeforeBegin = die(13, "before the Begin")
		c.Router.BeforeDecide = die(7, "after staging")
		c.Agents = AgentOptions{
			Driver:   coordinator.DriverOptions{Tick: 10 * time.Millisecond, RecoverAfter: 300 * time.Millisecond},
			Resolver: coordinator.ResolverOptions{InquireAfter: time.Second, Interval: 100 * time.Millisecond},
		}
	})
	l := startLoad(t, fc.testCluster, "rd", 6)
	l.waitAcked(t, 300)
	l.finish()
	if deaths.Load() == 0 {
		t.Fatal("the router never died")
	}
	l.verify(t, fc.testCluster)
	t.Logf("the router died %d times", deaths.Load())
}

package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/lni/dragonboat/v4/logger"

	"github.com/shardledger/shardledger/coordinator"
	"github.com/shardledger/shardledger/internal/node"
	"github.com/shardledger/shardledger/ledger"
	"github.com/shardledger/shardledger/meta"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
	"github.com/shardledger/shardledger/proto/gen/ledger/v1/ledgerv1connect"
	"github.com/shardledger/shardledger/router"
)

const testSlots = 4096

func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

type testCluster struct {
	*Local
	srv    *httptest.Server
	client ledgerv1connect.LedgerServiceClient
	admin  ledgerv1connect.AdminServiceClient
}

func startCluster(t *testing.T, dir string, addrs []string) *testCluster {
	return startClusterWith(t, dir, addrs, nil)
}

func startClusterWith(t *testing.T, dir string, addrs []string, mutate func(*Config)) *testCluster {
	t.Helper()
	watchdog(t) // registered first: its cleanup runs last, so it covers the close too
	node.QuietDragonboat()
	logger.GetLogger("transport").SetLevel(logger.CRITICAL) // peers stopped on purpose
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := Config{Dir: dir, RaftAddresses: addrs, ShardCount: 4, SlotCount: testSlots,
		RTTMillisecond: 5, Router: router.Options{ProposalTimeout: time.Second},
		Agents: AgentOptions{Driver: coordinator.DriverOptions{Tick: 10 * time.Millisecond, RecoverAfter: 500 * time.Millisecond},
			Resolver: coordinator.ResolverOptions{InquireAfter: 3 * time.Second, Interval: 200 * time.Millisecond}},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if mutate != nil {
		mutate(&cfg)
	}
	l, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	srv := httptest.NewServer(l.Router.Handler())
	tc := &testCluster{Local: l, srv: srv,
		client: ledgerv1connect.NewLedgerServiceClient(srv.Client(), srv.URL),
		admin:  ledgerv1connect.NewAdminServiceClient(srv.Client(), srv.URL)}
	t.Cleanup(tc.close)
	return tc
}

func (tc *testCluster) close() {
	if tc.srv != nil {
		tc.srv.Close()
		tc.srv = nil
		tc.Local.Close()
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// idsOnShard returns n account ids whose slots belong to shard (per the initial map).
func idsOnShard(prefix string, shard uint64, n int) []string {
	m := meta.Initial(testSlots, 4, 1, []*raftv1.NodeInfo{{Id: 1}})
	var out []string
	for i := 0; len(out) < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if m.SlotShard[ledger.SlotOf(id, testSlots)] == shard {
			out = append(out, id)
		}
	}
	return out
}

func createAccounts(t *testing.T, c ledgerv1connect.LedgerServiceClient, ids []string, noOverdraft bool) {
	t.Helper()
	req := &ledgerv1.CreateAccountsRequest{}
	for _, id := range ids {
		req.Accounts = append(req.Accounts, &ledgerv1.Account{Id: id, Currency: "USD", DebitsMustNotExceedCredits: noOverdraft})
	}
	res, err := c.CreateAccounts(context.Background(), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("create accounts: %v", err)
	}
	for _, r := range res.Msg.Results {
		if r.Status != ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED && r.Status != ledgerv1.AccountStatus_ACCOUNT_STATUS_EXISTS {
			t.Fatalf("create account %s: %v %s", r.Id, r.Status, r.Message)
		}
	}
}

func transfer(id, from, to string, amount uint64) *ledgerv1.Transfer {
	return &ledgerv1.Transfer{Id: id, DebitAccountId: from, CreditAccountId: to, Amount: amount, Currency: "USD"}
}

func getAccounts(t *testing.T, c ledgerv1connect.LedgerServiceClient, ids []string) map[string]*ledgerv1.Account {
	t.Helper()
	res, err := c.GetAccounts(context.Background(), connect.NewRequest(&ledgerv1.GetAccountsRequest{Ids: ids}))
	if err != nil {
		t.Fatalf("get accounts: %v", err)
	}
	out := map[string]*ledgerv1.Account{}
	for _, a := range res.Msg.Accounts {
		out[a.Id] = a
	}
	return out
}

func TestTransfersThroughConnectAPI(t *testing.T) {
	tc := startCluster(t, t.TempDir(), freeAddrs(t, 3))
	ids := idsOnShard("acct", 2, 3)
	createAccounts(t, tc.client, ids, true)
	ctx := context.Background()
	res, err := tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{
		transfer("fund", ids[2], ids[0], 0), // zero amount: INVALID_AMOUNT
		transfer("t1", ids[0], ids[1], 10),  // no funds: INSUFFICIENT_FUNDS
	}}))
	if err != nil {
		t.Fatal(err)
	}
	want := []ledgerv1.TransferStatus{ledgerv1.TransferStatus_TRANSFER_STATUS_INVALID_AMOUNT, ledgerv1.TransferStatus_TRANSFER_STATUS_INSUFFICIENT_FUNDS}
	for i, r := range res.Msg.Results {
		if r.Status != want[i] {
			t.Fatalf("result %d: got %v want %v", i, r.Status, want[i])
		}
	}
	// ids[2] has no overdraft protection? It has: create a funding account without it.
	src := idsOnShard("src", 2, 1)
	createAccounts(t, tc.client, src, false)
	res, err = tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{
		transfer("fund-0", src[0], ids[0], 100),
		transfer("t2", ids[0], ids[1], 30),
		transfer("t1", ids[0], ids[1], 10), // failed before: stays failed
	}}))
	if err != nil {
		t.Fatal(err)
	}
	want = []ledgerv1.TransferStatus{ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED, ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED,
		ledgerv1.TransferStatus_TRANSFER_STATUS_INSUFFICIENT_FUNDS}
	for i, r := range res.Msg.Results {
		if r.Status != want[i] {
			t.Fatalf("result %d: got %v want %v (%s)", i, r.Status, want[i], r.Message)
		}
	}
	accs := getAccounts(t, tc.client, []string{ids[0], ids[1], src[0]})
	if a := accs[ids[0]]; a.CreditsPosted != 100 || a.DebitsPosted != 30 {
		t.Fatalf("account 0: %v", a)
	}
	if a := accs[ids[1]]; a.CreditsPosted != 30 {
		t.Fatalf("account 1: %v", a)
	}
	// Stale reads answer too.
	sres, err := tc.client.GetAccounts(ctx, connect.NewRequest(&ledgerv1.GetAccountsRequest{Ids: []string{src[0]}, Consistency: ledgerv1.Consistency_CONSISTENCY_STALE}))
	if err != nil || len(sres.Msg.Accounts) != 1 {
		t.Fatalf("stale read: %v %v", sres, err)
	}
	gt, err := tc.client.GetTransfers(ctx, connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: []string{"t2", "t1", "nope"}}))
	if err != nil {
		t.Fatal(err)
	}
	if len(gt.Msg.Transfers) != 1 || gt.Msg.Transfers[0].Id != "t2" || len(gt.Msg.NotFound) != 2 {
		t.Fatalf("get transfers: %v", gt.Msg)
	}
	// Pending then post without naming the accounts (the router finds them).
	res, err = tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{
		{Id: "p1", DebitAccountId: ids[0], CreditAccountId: ids[1], Amount: 50, Currency: "USD", Pending: true},
	}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
		t.Fatalf("pending: %v %v", res, err)
	}
	res, err = tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{
		{Id: "p1-post", PostPendingId: "p1", Amount: 20},
	}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
		t.Fatalf("post: %v %v", res, err)
	}
	accs = getAccounts(t, tc.client, []string{ids[0]})
	if a := accs[ids[0]]; a.DebitsPosted != 50 || a.DebitsPending != 0 {
		t.Fatalf("after post: %v", a)
	}
	// Cluster status names every group with a leader.
	st, err := tc.admin.GetClusterStatus(ctx, connect.NewRequest(&ledgerv1.GetClusterStatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Msg.Groups) != 6 || len(st.Msg.Nodes) != 3 { // meta, 4 shards, 1 coordinator
		t.Fatalf("status: %v", st.Msg)
	}
}

func TestCrossShardTransfers(t *testing.T) {
	tc := startCluster(t, t.TempDir(), freeAddrs(t, 3))
	ctx := context.Background()
	a := idsOnShard("x", 1, 2)
	b := idsOnShard("y", 3, 2)
	createAccounts(t, tc.client, []string{a[0], b[0]}, false)
	createAccounts(t, tc.client, []string{a[1], b[1]}, true) // no overdraft
	send := func(ts ...*ledgerv1.Transfer) []*ledgerv1.TransferResult {
		t.Helper()
		res, err := tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: ts}))
		if err != nil {
			t.Fatalf("create transfers: %v", err)
		}
		return res.Msg.Results
	}
	expect := func(got []*ledgerv1.TransferResult, want ...ledgerv1.TransferStatus) {
		t.Helper()
		for i := range want {
			if got[i].Status != want[i] {
				t.Fatalf("result %d: got %v (%s), want %v", i, got[i].Status, got[i].Message, want[i])
			}
		}
	}
	const created, exists = ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED, ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS
	// One cross-shard transfer, an intra-shard one in the same request, and a retry.
	expect(send(transfer("c1", a[0], b[0], 70), transfer("l1", a[0], a[1], 5)), created, created)
	expect(send(transfer("c1", a[0], b[0], 70)), exists)
	expect(send(transfer("c1", a[0], b[0], 71)), ledgerv1.TransferStatus_TRANSFER_STATUS_ID_REUSED)
	// Refused by a participant: nothing applied, outcome kept.
	expect(send(transfer("c2", a[1], b[1], 1000)), ledgerv1.TransferStatus_TRANSFER_STATUS_INSUFFICIENT_FUNDS)
	expect(send(transfer("c3", a[0], "missing-on-3", 1)), ledgerv1.TransferStatus_TRANSFER_STATUS_CREDIT_ACCOUNT_NOT_FOUND)
	// A linked chain across shards: all or nothing.
	c4 := transfer("c4", a[0], b[1], 10)
	c4.Linked = true
	expect(send(c4, transfer("c5", b[1], a[1], 11)), ledgerv1.TransferStatus_TRANSFER_STATUS_LINKED_EVENT_FAILED,
		ledgerv1.TransferStatus_TRANSFER_STATUS_INSUFFICIENT_FUNDS)
	// Branches reserve: money a chain moves into b1 is not yet available to b1 further
	// down the same cross-shard chain (it is, within one shard).
	c6 := transfer("c6", a[0], b[1], 10)
	c6.Linked = true
	expect(send(c6, transfer("c7", b[0], a[1], 10)), created, created)
	// Two-phase across shards: try, partial post, and a void.
	p1 := transfer("p1", a[0], b[0], 50)
	p1.Pending = true
	expect(send(p1), created)
	expect(send(&ledgerv1.Transfer{Id: "p1-post", PostPendingId: "p1", Amount: 30}), created)
	expect(send(&ledgerv1.Transfer{Id: "p1-post", PostPendingId: "p1", Amount: 30}), exists)
	expect(send(&ledgerv1.Transfer{Id: "p1-void", VoidPendingId: "p1"}), ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_ALREADY_POSTED)
	p2 := transfer("p2", a[0], b[0], 40)
	p2.Pending = true
	expect(send(p2), created)
	expect(send(&ledgerv1.Transfer{Id: "p2-void", VoidPendingId: "p2"}), created)

	waitQuiescent(t, tc)
	accs := getAccounts(t, tc.client, []string{a[0], a[1], b[0], b[1]})
	// a0: -70 -5 -10 -30 ; b0: +70 +30 -10 ; a1: +5 +10 ; b1: +10
	if x := accs[a[0]]; x.DebitsPosted != 115 || x.DebitsPending != 0 {
		t.Fatalf("a0: %v", x)
	}
	if x := accs[b[0]]; x.CreditsPosted != 100 || x.DebitsPosted != 10 || x.CreditsPending != 0 {
		t.Fatalf("b0: %v", x)
	}
	if x := accs[a[1]]; x.CreditsPosted != 15 {
		t.Fatalf("a1: %v", x)
	}
	if x := accs[b[1]]; x.CreditsPosted != 10 || x.DebitsPosted != 0 {
		t.Fatalf("b1: %v", x)
	}
	gt, err := tc.client.GetTransfers(ctx, connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: []string{"c1", "c2", "c6", "p1", "p1-post", "p2"}}))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*ledgerv1.Transfer{}
	for _, tr := range gt.Msg.Transfers {
		got[tr.Id] = tr
	}
	if got["c1"] == nil || got["c2"] != nil || got["c6"] == nil || got["p1-post"] == nil {
		t.Fatalf("get transfers: %v", gt.Msg)
	}
	if got["p1"].GetState() != ledgerv1.TransferState_TRANSFER_STATE_POSTED || got["p2"].GetState() != ledgerv1.TransferState_TRANSFER_STATE_VOIDED {
		t.Fatalf("pending states: %v / %v", got["p1"], got["p2"])
	}
}

// TestCrossShardBatchAndReusedIDs: one request carrying hundreds of cross-shard
// transfers (their branches prepared with one command per shard) answers each on its
// own; a transaction id reused with other accounts answers ID_REUSED and leaves no
// reservation behind (the router releases the branches it prepared for it).
func TestCrossShardBatchAndReusedIDs(t *testing.T) {
	tc := startCluster(t, t.TempDir(), freeAddrs(t, 3))
	ctx := context.Background()
	from, to, broke := idsOnShard("bx", 1, 3), idsOnShard("by", 3, 3), idsOnShard("bz", 2, 1)[0]
	createAccounts(t, tc.client, append(append([]string{}, from...), to...), false)
	createAccounts(t, tc.client, []string{broke}, true) // no overdraft, no money
	var ts []*ledgerv1.Transfer
	want := map[string]ledgerv1.TransferStatus{}
	for i := range 300 {
		tr := transfer(fmt.Sprintf("bt-%d", i), from[i%3], to[(i/3)%3], uint64(i%7+1))
		if i%10 == 9 {
			tr.DebitAccountId = broke
			want[tr.Id] = ledgerv1.TransferStatus_TRANSFER_STATUS_INSUFFICIENT_FUNDS
		} else {
			want[tr.Id] = ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED
		}
		ts = append(ts, tr)
	}
	res, err := tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: ts}))
	if err != nil {
		t.Fatal(err)
	}
	var moved uint64
	for i, r := range res.Msg.Results {
		if r.Id != ts[i].Id || r.Status != want[r.Id] {
			t.Fatalf("result %d: %v (%s), want %s %v", i, r.Id, r.Status, ts[i].Id, want[ts[i].Id])
		}
		if r.Status == ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
			moved += ts[i].Amount
		}
	}
	// The same request again: every transfer answers its outcome, nothing moves twice.
	res, err = tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: ts}))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res.Msg.Results {
		w := want[r.Id]
		if w == ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
			w = ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS
		}
		if r.Status != w {
			t.Fatalf("retry result %d: %v %v, want %v", i, r.Id, r.Status, w)
		}
	}
	// bt-0 moved from[0] (shard 1) -> to[0] (shard 3). The same id between accounts of
	// shards 2 and 4: ID_REUSED, and no money stays reserved on them.
	c, d := idsOnShard("rc", 2, 1)[0], idsOnShard("rd", 4, 1)[0]
	createAccounts(t, tc.client, []string{c, d}, false)
	res, err = tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{transfer("bt-0", c, d, 5)}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_ID_REUSED {
		t.Fatalf("reused id: %v %v", res, err)
	}
	accs := getAccounts(t, tc.client, []string{c, d})
	if accs[c].DebitsPending != 0 || accs[d].CreditsPending != 0 || accs[c].DebitsPosted != 0 || accs[d].CreditsPosted != 0 {
		t.Fatalf("a reused id left money reserved or moved: %v %v", accs[c], accs[d])
	}
	// A linked chain across shards, then a chain whose first id is that chain's second
	// transfer: ID_REUSED (its branches, prepared under an id that names no txn, are
	// released), and the first chain is untouched.
	l1 := transfer("lk-1", from[0], to[0], 3)
	l1.Linked = true
	res, err = tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{l1, transfer("lk-2", from[1], to[1], 4)}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
		t.Fatalf("chain: %v %v", res, err)
	}
	moved += 7
	res, err = tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{transfer("lk-2", c, d, 6)}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_ID_REUSED {
		t.Fatalf("reused member id: %v %v", res, err)
	}
	accs = getAccounts(t, tc.client, []string{c, d})
	if accs[c].DebitsPending != 0 || accs[d].CreditsPending != 0 {
		t.Fatalf("a reused member id left money reserved: %v %v", accs[c], accs[d])
	}
	waitQuiescent(t, tc)
	accs = getAccounts(t, tc.client, append(append([]string{broke}, from...), to...))
	var debits, credits uint64
	for _, id := range from {
		debits += accs[id].DebitsPosted
	}
	for _, id := range to {
		credits += accs[id].CreditsPosted
	}
	if debits != moved || credits != moved || accs[broke].DebitsPosted != 0 || accs[broke].DebitsPending != 0 {
		t.Fatalf("moved %d: debits %d, credits %d, broke %v", moved, debits, credits, accs[broke])
	}
}

// waitQuiescent waits until no transaction is in doubt and the audit is clean.
func waitQuiescent(t *testing.T, tc *testCluster) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ind, err := tc.admin.ListInDoubtTransactions(context.Background(), connect.NewRequest(&ledgerv1.ListInDoubtTransactionsRequest{}))
		if err == nil && len(ind.Msg.Transactions) == 0 {
			au, err := tc.admin.Audit(context.Background(), connect.NewRequest(&ledgerv1.AuditRequest{}))
			if err == nil && au.Msg.Ok && au.Msg.PreparedBranches == 0 {
				return
			}
			if err == nil && time.Now().After(deadline) {
				t.Fatalf("audit not clean: %v", au.Msg)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("transactions still in doubt: %v %v", ind, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBadInputOverTheWire(t *testing.T) {
	tc := startCluster(t, t.TempDir(), freeAddrs(t, 3))
	ctx := context.Background()
	ids := idsOnShard("bad", 1, 3)
	createAccounts(t, tc.client, ids[:2], false)
	eur := idsOnShard("eur", 1, 1)[0]
	missing := idsOnShard("missing", 1, 2)
	res0, err := tc.client.CreateAccounts(ctx, connect.NewRequest(&ledgerv1.CreateAccountsRequest{Accounts: []*ledgerv1.Account{{Id: eur, Currency: "EUR"}}}))
	if err != nil || res0.Msg.Results[0].Status != ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED {
		t.Fatalf("create EUR account: %v %v", res0, err)
	}

	cases := []struct {
		name string
		req  *ledgerv1.CreateTransfersRequest
		code connect.Code
	}{
		{"empty batch", &ledgerv1.CreateTransfersRequest{}, connect.CodeInvalidArgument},
		{"bad id charset", &ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{transfer("ok-1", ids[0], ids[1], 1), transfer("bad id!", ids[0], ids[1], 1)}}, connect.CodeInvalidArgument},
		{"id too long", &ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{transfer(string(bytes.Repeat([]byte("a"), 65)), ids[0], ids[1], 1)}}, connect.CodeInvalidArgument},
		{"bad currency", &ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{transfer("ok-2", ids[0], ids[1], 1), {Id: "c", DebitAccountId: ids[0], CreditAccountId: ids[1], Amount: 1, Currency: "usd"}}}, connect.CodeInvalidArgument},
		{"open chain", &ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{{Id: "ok-3", DebitAccountId: ids[0], CreditAccountId: ids[1], Amount: 1, Currency: "USD", Linked: true}}}, connect.CodeInvalidArgument},
		{"post and void", &ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{{Id: "pv", PostPendingId: "a", VoidPendingId: "b"}}}, connect.CodeInvalidArgument},
	}
	big := &ledgerv1.CreateTransfersRequest{}
	for i := 0; i <= ledger.BatchItemsMax; i++ {
		big.Transfers = append(big.Transfers, transfer(fmt.Sprintf("big-%d", i), ids[0], ids[1], 1))
	}
	cases = append(cases, struct {
		name string
		req  *ledgerv1.CreateTransfersRequest
		code connect.Code
	}{"oversize batch", big, connect.CodeInvalidArgument})
	huge := &ledgerv1.CreateTransfersRequest{}
	for i := 0; i < 8000; i++ {
		tr := transfer(fmt.Sprintf("huge-%d", i), ids[0], ids[1], 1)
		tr.UserData = string(bytes.Repeat([]byte("u"), 2000)) // 16 MB in all: over the message limit
		huge.Transfers = append(huge.Transfers, tr)
	}
	cases = append(cases, struct {
		name string
		req  *ledgerv1.CreateTransfersRequest
		code connect.Code
	}{"over-limit message", huge, connect.CodeResourceExhausted})
	for _, c := range cases {
		_, err := tc.client.CreateTransfers(ctx, connect.NewRequest(c.req))
		if connect.CodeOf(err) != c.code {
			t.Errorf("%s: want %v, got %v", c.name, c.code, err)
		}
	}
	// Per-item statuses.
	res, err := tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{
		transfer("zero", ids[0], ids[1], 0),
		transfer("nodebit", missing[0], ids[1], 1),
		transfer("nocredit", ids[0], missing[1], 1),
		transfer("same-acct", ids[0], ids[0], 1),
		transfer("eur", ids[0], eur, 1),
	}}))
	if err != nil {
		t.Fatal(err)
	}
	want := []ledgerv1.TransferStatus{
		ledgerv1.TransferStatus_TRANSFER_STATUS_INVALID_AMOUNT,
		ledgerv1.TransferStatus_TRANSFER_STATUS_DEBIT_ACCOUNT_NOT_FOUND,
		ledgerv1.TransferStatus_TRANSFER_STATUS_CREDIT_ACCOUNT_NOT_FOUND,
		ledgerv1.TransferStatus_TRANSFER_STATUS_SAME_ACCOUNT,
		ledgerv1.TransferStatus_TRANSFER_STATUS_CURRENCY_MISMATCH,
	}
	for i, r := range res.Msg.Results {
		if r.Status != want[i] {
			t.Errorf("item %d: got %v want %v", i, r.Status, want[i])
		}
	}
	// Nothing of the rejected requests was applied.
	accs := getAccounts(t, tc.client, ids[:2])
	for id, a := range accs {
		if a.DebitsPosted != 0 || a.CreditsPosted != 0 {
			t.Errorf("account %s changed: %v", id, a)
		}
	}
	gt, err := tc.client.GetTransfers(ctx, connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: []string{"ok-1", "ok-2", "ok-3", "big-0", "huge-0"}}))
	if err != nil || len(gt.Msg.Transfers) != 0 {
		t.Fatalf("rejected transfers were applied: %v %v", gt, err)
	}
	// Bad accounts.
	_, err = tc.client.CreateAccounts(ctx, connect.NewRequest(&ledgerv1.CreateAccountsRequest{Accounts: []*ledgerv1.Account{{Id: "fine", Currency: "USD"}, {Id: "x y", Currency: "USD"}}}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("bad account id: %v", err)
	}
	var details int
	var ce *connect.Error
	if errors.As(err, &ce) {
		details = len(ce.Details())
	}
	if details == 0 {
		t.Errorf("invalid_argument carries no field-level detail")
	}
	if got := getAccounts(t, tc.client, []string{"fine"}); len(got) != 0 {
		t.Fatalf("account of a rejected request was created")
	}
	ar, err := tc.client.CreateAccounts(ctx, connect.NewRequest(&ledgerv1.CreateAccountsRequest{Accounts: []*ledgerv1.Account{
		{Id: "both-flags", Currency: "USD", DebitsMustNotExceedCredits: true, CreditsMustNotExceedDebits: true},
		{Id: ids[0], Currency: "EUR"},
		{Id: ids[1], Currency: "USD"},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	wantA := []ledgerv1.AccountStatus{ledgerv1.AccountStatus_ACCOUNT_STATUS_INVALID, ledgerv1.AccountStatus_ACCOUNT_STATUS_ID_REUSED, ledgerv1.AccountStatus_ACCOUNT_STATUS_EXISTS}
	for i, r := range ar.Msg.Results {
		if r.Status != wantA[i] {
			t.Errorf("account %d: got %v want %v", i, r.Status, wantA[i])
		}
	}
	if _, err := tc.client.GetAccounts(ctx, connect.NewRequest(&ledgerv1.GetAccountsRequest{})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("empty get: %v", err)
	}
}

// stateHashes returns each running node's (applied index, state hash) for a shard.
func stateHashes(t *testing.T, l *Local, shard uint64) (map[uint64]uint64, map[uint64]string) {
	idx, hashes := map[uint64]uint64{}, map[uint64]string{}
	for _, b := range l.Backends() {
		n := b.Node()
		if n == nil {
			continue
		}
		res, err := n.Read(context.Background(), shard, &raftv1.Query{Op: &raftv1.Query_StateHash{StateHash: true}}, true)
		if err != nil {
			continue
		}
		qr := res.(*raftv1.QueryResult)
		idx[b.ID()], hashes[b.ID()] = qr.AppliedIndex, fmt.Sprintf("%x", qr.StateHash)
	}
	return idx, hashes
}

// waitConverged waits until all three replicas of every shard and coordinator group are
// at the same applied index with the same state hash.
func waitConverged(t *testing.T, l *Local) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, shard := range []uint64{1, 2, 3, 4, meta.CoordinatorGroupBase} {
		for {
			idx, hashes := stateHashes(t, l, shard)
			same := len(idx) == 3
			for id := range idx {
				if idx[id] != idx[1] || hashes[id] != hashes[1] {
					same = false
				}
			}
			if same {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("shard %d did not converge: %v %v", shard, idx, hashes)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func TestShardLeaderKilledUnderLoad(t *testing.T) {
	dir, addrs := t.TempDir(), freeAddrs(t, 3)
	tc := startCluster(t, dir, addrs)
	const shard = 1
	accts := idsOnShard("load", shard, 8)
	createAccounts(t, tc.client, accts, false)

	var (
		acked   sync.Map // transfer id -> amount
		tried   sync.Map
		stop    atomic.Bool
		nAcked  atomic.Int64
		retries atomic.Int64
	)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				amt := uint64(i%7 + 1)
				tr := transfer(id, accts[w], accts[(w+1+i)%8], amt)
				if tr.DebitAccountId == tr.CreditAccountId {
					tr.CreditAccountId = accts[(w+1)%8]
				}
				tried.Store(id, amt)
				// stop is checked between attempts too: an id left untried is in tried, as
				// any id whose outcome the client did not see.
				for attempt := 0; attempt < 50 && !stop.Load(); attempt++ {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					res, err := tc.client.CreateTransfers(ctx, connect.NewRequest(&ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{tr}}))
					cancel()
					if err == nil {
						s := res.Msg.Results[0].Status
						if s != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED && s != ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS {
							t.Errorf("transfer %s: %v %s", id, s, res.Msg.Results[0].Message)
							return
						}
						acked.Store(id, amt)
						nAcked.Add(1)
						break
					}
					retries.Add(1)
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(700 * time.Millisecond)
	var victim int = -1
	for i, b := range tc.Backends() {
		if l, _, ok := b.Leader(shard); ok && l == b.ID() {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatal("no leader for shard 1")
	}
	before := nAcked.Load()
	tc.StopNode(victim)
	t.Logf("stopped node %d (leader of shard %d) after %d acked transfers", victim+1, shard, before)
	time.Sleep(1500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	after := nAcked.Load()
	t.Logf("acked %d transfers (%d after the kill), %d client retries", after, after-before, retries.Load())
	if after <= before {
		t.Fatalf("no transfer acknowledged after the leader was killed")
	}

	// Every acknowledged transfer is there; nothing was applied twice.
	var all []string
	tried.Range(func(k, _ any) bool { all = append(all, k.(string)); return true })
	found := map[string]bool{}
	for i := 0; i < len(all); i += 1000 {
		j := min(i+1000, len(all))
		gt, err := tc.client.GetTransfers(context.Background(), connect.NewRequest(&ledgerv1.GetTransfersRequest{Ids: all[i:j]}))
		if err != nil {
			t.Fatal(err)
		}
		for _, tr := range gt.Msg.Transfers {
			found[tr.Id] = true
		}
	}
	var sumFound uint64
	tried.Range(func(k, v any) bool {
		if found[k.(string)] {
			sumFound += v.(uint64)
		}
		return true
	})
	acked.Range(func(k, _ any) bool {
		if !found[k.(string)] {
			t.Errorf("acknowledged transfer %s lost", k)
		}
		return true
	})
	accs := getAccounts(t, tc.client, accts)
	var debits, credits uint64
	for _, a := range accs {
		debits += a.DebitsPosted
		credits += a.CreditsPosted
	}
	if debits != credits || debits != sumFound {
		t.Fatalf("debits %d credits %d, transfers present sum to %d: a transfer was applied twice or lost", debits, credits, sumFound)
	}

	// The stopped node restarts and catches up to equal state hashes.
	if err := tc.StartNode(victim); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, tc.Local)
}

func TestClusterRestartKeepsData(t *testing.T) {
	dir, addrs := t.TempDir(), freeAddrs(t, 3)
	tc := startCluster(t, dir, addrs)
	ids := idsOnShard("keep", 3, 2)
	createAccounts(t, tc.client, ids, false)
	res, err := tc.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{transfer("keep-t", ids[0], ids[1], 42)}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
		t.Fatalf("transfer: %v %v", res, err)
	}
	tc.close()

	tc2 := startCluster(t, dir, addrs)
	accs := getAccounts(t, tc2.client, ids)
	if accs[ids[0]].GetDebitsPosted() != 42 || accs[ids[1]].GetCreditsPosted() != 42 {
		t.Fatalf("after restart: %v", accs)
	}
	res, err = tc2.client.CreateTransfers(context.Background(), connect.NewRequest(&ledgerv1.CreateTransfersRequest{
		Transfers: []*ledgerv1.Transfer{transfer("keep-t", ids[0], ids[1], 42)}}))
	if err != nil || res.Msg.Results[0].Status != ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS {
		t.Fatalf("retry after restart: %v %v", res, err)
	}
	waitConverged(t, tc2.Local)
}

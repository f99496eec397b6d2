package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
	"github.com/shardledger/shardledger/proto/gen/ledger/v1/ledgerv1connect"
)

func TestMain(m *testing.M) {
	os.Unsetenv("LEDGER_ADDR")
	os.Unsetenv("LEDGER_TOKEN")
	os.Exit(m.Run())
}

// fake is an in-memory LedgerService and AdminService that records what it was sent.
type fake struct {
	ledgerv1connect.UnimplementedLedgerServiceHandler
	ledgerv1connect.UnimplementedAdminServiceHandler

	mu              sync.Mutex
	accounts        map[string]*ledgerv1.Account
	transfers       map[string]*ledgerv1.Transfer
	lastAccount     *ledgerv1.Account
	lastTransfer    *ledgerv1.Transfer
	lastConsistency ledgerv1.Consistency
	lastAuth        string
	audit           *ledgerv1.AuditResponse // what Audit answers
	auditErr        error                   // when set, Audit fails with it
	inDoubt         []*ledgerv1.InDoubtTransaction
	lastLimit       uint32
}

func (f *fake) record(h http.Header) {
	f.lastAuth = h.Get("Authorization")
}

func (f *fake) CreateAccounts(_ context.Context, req *connect.Request[ledgerv1.CreateAccountsRequest]) (*connect.Response[ledgerv1.CreateAccountsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(req.Header())
	resp := &ledgerv1.CreateAccountsResponse{}
	for i, a := range req.Msg.GetAccounts() {
		f.lastAccount = a
		if strings.ContainsAny(a.GetId(), " /") {
			ce := connect.NewError(connect.CodeInvalidArgument, errors.New("invalid request: accounts[0].id: bad charset"))
			d, _ := connect.NewErrorDetail(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
				{Field: "accounts[" + string(rune('0'+i)) + "].id", Description: "bad charset"},
			}})
			ce.AddDetail(d)
			return nil, ce
		}
		st := ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED
		if old, ok := f.accounts[a.GetId()]; ok {
			st = ledgerv1.AccountStatus_ACCOUNT_STATUS_EXISTS
			if !proto.Equal(old, a) {
				st = ledgerv1.AccountStatus_ACCOUNT_STATUS_ID_REUSED
			}
		} else {
			f.accounts[a.GetId()] = a
		}
		resp.Results = append(resp.Results, &ledgerv1.AccountResult{Id: a.GetId(), Status: st})
	}
	return connect.NewResponse(resp), nil
}

func (f *fake) GetAccounts(_ context.Context, req *connect.Request[ledgerv1.GetAccountsRequest]) (*connect.Response[ledgerv1.GetAccountsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(req.Header())
	f.lastConsistency = req.Msg.GetConsistency()
	resp := &ledgerv1.GetAccountsResponse{}
	for _, id := range req.Msg.GetIds() {
		if a, ok := f.accounts[id]; ok {
			resp.Accounts = append(resp.Accounts, a)
		} else {
			resp.NotFound = append(resp.NotFound, id)
		}
	}
	return connect.NewResponse(resp), nil
}

func (f *fake) CreateTransfers(ctx context.Context, req *connect.Request[ledgerv1.CreateTransfersRequest]) (*connect.Response[ledgerv1.CreateTransfersResponse], error) {
	if ts := req.Msg.GetTransfers(); len(ts) > 0 && ts[0].GetId() == "slow" {
		<-ctx.Done()
		return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(req.Header())
	resp := &ledgerv1.CreateTransfersResponse{}
	for _, t := range req.Msg.GetTransfers() {
		f.lastTransfer = t
		r := &ledgerv1.TransferResult{Id: t.GetId(), Status: ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED}
		switch {
		case t.GetAmount() > 1000:
			r.Status = ledgerv1.TransferStatus_TRANSFER_STATUS_INSUFFICIENT_FUNDS
			r.Message = "not enough money"
		case t.GetCurrency() == "XTS": // stands for a cross-shard transfer that could not be prepared in time
			r.Status = ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT
			r.Message = "participants not prepared in time"
		default:
			f.transfers[t.GetId()] = t
		}
		resp.Results = append(resp.Results, r)
	}
	return connect.NewResponse(resp), nil
}

func (f *fake) GetTransfers(_ context.Context, req *connect.Request[ledgerv1.GetTransfersRequest]) (*connect.Response[ledgerv1.GetTransfersResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &ledgerv1.GetTransfersResponse{}
	for _, id := range req.Msg.GetIds() {
		if t, ok := f.transfers[id]; ok {
			resp.Transfers = append(resp.Transfers, t)
		} else {
			resp.NotFound = append(resp.NotFound, id)
		}
	}
	return connect.NewResponse(resp), nil
}

func (f *fake) GetClusterStatus(_ context.Context, req *connect.Request[ledgerv1.GetClusterStatusRequest]) (*connect.Response[ledgerv1.GetClusterStatusResponse], error) {
	f.mu.Lock()
	f.record(req.Header())
	f.mu.Unlock()
	return connect.NewResponse(&ledgerv1.GetClusterStatusResponse{
		ShardMapEpoch: 7,
		Nodes: []*ledgerv1.Node{
			{Id: 1, RaftAddress: "10.0.0.1:63001", Zone: "zone-a", Reachable: true},
			{Id: 2, RaftAddress: "10.0.0.2:63001", Zone: "zone-b"},
		},
		Groups: []*ledgerv1.Group{
			{Id: 1, Kind: ledgerv1.GroupKind_GROUP_KIND_META, Replicas: []uint64{1, 2}, Leader: 1, Term: 3, AppliedIndex: 42},
			{Id: 100, Kind: ledgerv1.GroupKind_GROUP_KIND_SHARD, Replicas: []uint64{1, 2}, Leader: 0, Term: 5, AppliedIndex: 9000, SlotCount: 2048},
		},
	}), nil
}

func (f *fake) GetShardMap(context.Context, *connect.Request[ledgerv1.GetShardMapRequest]) (*connect.Response[ledgerv1.GetShardMapResponse], error) {
	return connect.NewResponse(&ledgerv1.GetShardMapResponse{
		Epoch:     7,
		SlotCount: 4096,
		Ranges:    []*ledgerv1.SlotRange{{Start: 0, End: 2048, ShardId: 100}, {Start: 2048, End: 4096, ShardId: 101}},
		Shards:    []*ledgerv1.Shard{{Id: 100, Replicas: []uint64{1, 2, 3}}, {Id: 101, Replicas: []uint64{4, 5, 6}}},
	}), nil
}

func (f *fake) Audit(_ context.Context, req *connect.Request[ledgerv1.AuditRequest]) (*connect.Response[ledgerv1.AuditResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(req.Header())
	if f.auditErr != nil {
		return nil, f.auditErr
	}
	return connect.NewResponse(proto.CloneOf(f.audit)), nil
}

// ListInDoubtTransactions answers f.inDoubt, cut to the limit like the router does.
func (f *fake) ListInDoubtTransactions(_ context.Context, req *connect.Request[ledgerv1.ListInDoubtTransactionsRequest]) (*connect.Response[ledgerv1.ListInDoubtTransactionsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(req.Header())
	f.lastLimit = req.Msg.GetLimit()
	limit := int(req.Msg.GetLimit())
	if limit == 0 || limit > 1000 {
		limit = 1000
	}
	return connect.NewResponse(&ledgerv1.ListInDoubtTransactionsResponse{Transactions: f.inDoubt[:min(limit, len(f.inDoubt))]}), nil
}

func newFake(t *testing.T) (*fake, string) {
	t.Helper()
	f := &fake{accounts: map[string]*ledgerv1.Account{}, transfers: map[string]*ledgerv1.Transfer{}, audit: &ledgerv1.AuditResponse{Ok: true}}
	mux := http.NewServeMux()
	mux.Handle(ledgerv1connect.NewLedgerServiceHandler(f))
	mux.Handle(ledgerv1connect.NewAdminServiceHandler(f))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

// ledgerctl runs the command against url and returns exit code, stdout and stderr.
func ledgerctl(t *testing.T, url string, args ...string) (int, string, string) {
	t.Helper()
	return ledgerctlAt(t, time.Now, url, args...)
}

func ledgerctlAt(t *testing.T, now func() time.Time, url string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	if url != "" {
		args = append([]string{"--addr", url}, args...)
	}
	code := runAt(context.Background(), now, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func wantCode(t *testing.T, got, want int, stdout, stderr string) {
	t.Helper()
	if got != want {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", got, want, stdout, stderr)
	}
}

func TestAccountCreate(t *testing.T) {
	f, url := newFake(t)
	code, out, errOut := ledgerctl(t, url, "account", "create", "--id", "alice", "--currency", "EUR", "--no-overdraft", "--user-data", "hello")
	wantCode(t, code, exitOK, out, errOut)
	want := &ledgerv1.Account{Id: "alice", Currency: "EUR", DebitsMustNotExceedCredits: true, UserData: "hello"}
	if !proto.Equal(f.lastAccount, want) {
		t.Fatalf("sent %v, want %v", f.lastAccount, want)
	}
	if !strings.Contains(out, "alice") || !strings.Contains(out, "CREATED") || !strings.HasPrefix(out, "ID ") {
		t.Fatalf("output:\n%s", out)
	}

	// Idempotent replay: EXISTS is a success.
	code, out, errOut = ledgerctl(t, url, "account", "create", "--id", "alice", "--currency", "EUR", "--no-overdraft", "--user-data", "hello")
	wantCode(t, code, exitOK, out, errOut)
	if !strings.Contains(out, "EXISTS") {
		t.Fatalf("output:\n%s", out)
	}

	// Same id, other fields: ID_REUSED is a failure.
	code, out, errOut = ledgerctl(t, url, "account", "create", "--id", "alice", "--currency", "EUR", "--credits-limited")
	wantCode(t, code, exitFailed, out, errOut)
	if !strings.Contains(out, "ID_REUSED") {
		t.Fatalf("output:\n%s", out)
	}
	if !f.lastAccount.GetCreditsMustNotExceedDebits() || f.lastAccount.GetDebitsMustNotExceedCredits() {
		t.Fatalf("--credits-limited sent %v", f.lastAccount)
	}
}

func TestAccountGet(t *testing.T) {
	f, url := newFake(t)
	f.accounts["bob"] = &ledgerv1.Account{
		Id: "bob", Currency: "EUR", DebitsMustNotExceedCredits: true,
		CreditsPosted: 100, DebitsPosted: 250, DebitsPending: 30, CreditsPending: 5,
		CreatedAt: timestamppb.New(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)),
	}
	f.accounts["carol"] = &ledgerv1.Account{Id: "carol", Currency: "USD", CreditsPosted: 1 << 63, DebitsPosted: 0}

	code, out, errOut := ledgerctl(t, url, "account", "get", "bob", "carol")
	wantCode(t, code, exitOK, out, errOut)
	if f.lastConsistency != ledgerv1.Consistency_CONSISTENCY_UNSPECIFIED {
		t.Fatalf("consistency %v without --stale", f.lastConsistency)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header + 2 rows:\n%s", out)
	}
	if got := strings.Fields(lines[0]); got[2] != "BALANCE" || got[3] != "AVAILABLE" {
		t.Fatalf("header %q", lines[0])
	}
	bob := strings.Fields(lines[1])
	wantBob := []string{"bob", "EUR", "-150", "-180", "250", "100", "30", "5", "no-overdraft", "2024-05-01T12:00:00.000Z", "-"}
	if strings.Join(bob, " ") != strings.Join(wantBob, " ") {
		t.Fatalf("bob row %q, want %q", bob, wantBob)
	}
	if carol := strings.Fields(lines[2]); carol[2] != "9223372036854775808" {
		t.Fatalf("carol row %q", carol)
	}

	// Flags may follow ids; not-found ids are listed and make the exit code 1.
	code, out, errOut = ledgerctl(t, url, "account", "get", "bob", "nobody", "--stale")
	wantCode(t, code, exitFailed, out, errOut)
	if f.lastConsistency != ledgerv1.Consistency_CONSISTENCY_STALE {
		t.Fatalf("--stale sent consistency %v", f.lastConsistency)
	}
	if !strings.Contains(out, "not found: nobody") {
		t.Fatalf("output:\n%s", out)
	}
}

func TestAccountGetJSON(t *testing.T) {
	f, url := newFake(t)
	f.accounts["bob"] = &ledgerv1.Account{Id: "bob", Currency: "EUR", CreditsPosted: 100}
	code, out, errOut := ledgerctl(t, url, "--json", "account", "get", "bob", "nobody")
	wantCode(t, code, exitFailed, out, errOut)
	var got ledgerv1.GetAccountsResponse
	if err := protojson.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not protojson: %v\n%s", err, out)
	}
	want := &ledgerv1.GetAccountsResponse{Accounts: []*ledgerv1.Account{f.accounts["bob"]}, NotFound: []string{"nobody"}}
	if !proto.Equal(&got, want) {
		t.Fatalf("got %v, want %v", &got, want)
	}
	if !strings.Contains(out, `"creditsPosted"`) || !strings.Contains(out, `"100"`) {
		t.Fatalf("want lowerCamelCase and string uint64:\n%s", out)
	}
}

func TestTransferCreate(t *testing.T) {
	f, url := newFake(t)
	code, out, errOut := ledgerctl(t, url, "transfer", "create", "--id", "t1", "--from", "alice", "--to", "bob",
		"--amount", "500", "--currency", "EUR", "--code", "7", "--user-data", "rent")
	wantCode(t, code, exitOK, out, errOut)
	want := &ledgerv1.Transfer{Id: "t1", DebitAccountId: "alice", CreditAccountId: "bob", Amount: 500, Currency: "EUR", Code: 7, UserData: "rent"}
	if !proto.Equal(f.lastTransfer, want) {
		t.Fatalf("sent %v, want %v", f.lastTransfer, want)
	}
	if !strings.Contains(out, "t1") || !strings.Contains(out, "CREATED") {
		t.Fatalf("output:\n%s", out)
	}

	code, out, errOut = ledgerctl(t, url, "transfer", "create", "--id", "t2", "--from", "alice", "--to", "bob", "--amount", "5000", "--currency", "EUR")
	wantCode(t, code, exitFailed, out, errOut)
	if !strings.Contains(out, "INSUFFICIENT_FUNDS") || !strings.Contains(out, "not enough money") {
		t.Fatalf("output:\n%s", out)
	}

	code, out, errOut = ledgerctl(t, url, "transfer", "create", "--id", "p1", "--from", "alice", "--to", "bob",
		"--amount", "10", "--currency", "EUR", "--pending", "--timeout-seconds", "30")
	wantCode(t, code, exitOK, out, errOut)
	if !f.lastTransfer.GetPending() || f.lastTransfer.GetTimeoutSeconds() != 30 {
		t.Fatalf("sent %v", f.lastTransfer)
	}

	// A cross-shard transfer whose participants could not be prepared in time failed.
	code, out, errOut = ledgerctl(t, url, "transfer", "create", "--id", "x1", "--from", "alice", "--to", "bob", "--amount", "5", "--currency", "XTS")
	wantCode(t, code, exitFailed, out, errOut)
	if !containsLine(out, "x1 TIMED_OUT participants not prepared in time") {
		t.Fatalf("output:\n%s", out)
	}

	// A post needs only its own id and the pending id.
	code, out, errOut = ledgerctl(t, url, "transfer", "create", "--id", "c1", "--post", "p1")
	wantCode(t, code, exitOK, out, errOut)
	if want := (&ledgerv1.Transfer{Id: "c1", PostPendingId: "p1"}); !proto.Equal(f.lastTransfer, want) {
		t.Fatalf("sent %v, want %v", f.lastTransfer, want)
	}
	code, out, errOut = ledgerctl(t, url, "transfer", "create", "--id", "v1", "--void", "p1")
	wantCode(t, code, exitOK, out, errOut)
	if want := (&ledgerv1.Transfer{Id: "v1", VoidPendingId: "p1"}); !proto.Equal(f.lastTransfer, want) {
		t.Fatalf("sent %v, want %v", f.lastTransfer, want)
	}
}

func TestTransferGet(t *testing.T) {
	f, url := newFake(t)
	f.transfers["p1"] = &ledgerv1.Transfer{Id: "p1", DebitAccountId: "alice", CreditAccountId: "bob", Amount: 10, Currency: "EUR",
		Pending: true, TimeoutSeconds: 90, State: ledgerv1.TransferState_TRANSFER_STATE_POSTED}
	f.transfers["c1"] = &ledgerv1.Transfer{Id: "c1", PostPendingId: "p1", Code: 3}
	code, out, errOut := ledgerctl(t, url, "transfer", "get", "p1", "c1", "zz")
	wantCode(t, code, exitFailed, out, errOut)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("output:\n%s", out)
	}
	if got, want := strings.Join(strings.Fields(lines[1]), " "), "p1 alice bob 10 EUR 0 pending POSTED 1m30s - -"; got != want {
		t.Fatalf("p1 row %q, want %q", got, want)
	}
	if got, want := strings.Join(strings.Fields(lines[2]), " "), "c1 - - 0 - 3 post:p1 - - - -"; got != want {
		t.Fatalf("c1 row %q, want %q", got, want)
	}
	if lines[3] != "not found: zz" {
		t.Fatalf("last line %q", lines[3])
	}

	code, out, errOut = ledgerctl(t, url, "transfer", "get", "p1")
	wantCode(t, code, exitOK, out, errOut)
}

func TestClusterStatus(t *testing.T) {
	_, url := newFake(t)
	code, out, errOut := ledgerctl(t, url, "cluster", "status")
	wantCode(t, code, exitOK, out, errOut)
	for _, want := range []string{
		"shard map epoch: 7",
		"1 10.0.0.1:63001 zone-a yes",
		"2 10.0.0.2:63001 zone-b no",
		"GROUP KIND LEADER TERM APPLIED SLOTS REPLICAS",
		"1 meta 1 3 42 - 1,2",
		"100 shard - 5 9000 2048 1,2",
	} {
		if !containsLine(out, want) {
			t.Errorf("missing line %q in:\n%s", want, out)
		}
	}
}

func TestShardMap(t *testing.T) {
	_, url := newFake(t)
	code, out, errOut := ledgerctl(t, url, "shardmap")
	wantCode(t, code, exitOK, out, errOut)
	for _, want := range []string{"epoch: 7", "slots: 4096", "0-2048 2048 100 1,2,3", "2048-4096 2048 101 4,5,6"} {
		if !containsLine(out, want) {
			t.Errorf("missing line %q in:\n%s", want, out)
		}
	}

	code, out, errOut = ledgerctl(t, url, "shardmap", "--json")
	wantCode(t, code, exitOK, out, errOut)
	var got ledgerv1.GetShardMapResponse
	if err := protojson.Unmarshal([]byte(out), &got); err != nil || got.GetEpoch() != 7 || len(got.GetRanges()) != 2 {
		t.Fatalf("json %v: %v\n%s", &got, err, out)
	}
}

func TestAudit(t *testing.T) {
	f, url := newFake(t)
	f.audit = &ledgerv1.AuditResponse{Ok: true, Accounts: 3, DebitsPosted: 1500, CreditsPosted: 1500,
		DebitsPending: 30, CreditsPending: 30, PreparedBranches: 2, PendingTransfers: 1, OpenTransactions: 2}
	code, out, errOut := ledgerctl(t, url, "audit", "--token", "t0k")
	wantCode(t, code, exitOK, out, errOut)
	if f.lastAuth != "Bearer t0k" {
		t.Fatalf("Authorization %q", f.lastAuth)
	}
	for _, want := range []string{
		"audit: ok, no violations",
		"TOTAL VALUE",
		"accounts 3",
		"debits posted 1500",
		"credits posted 1500",
		"debits pending 30",
		"credits pending 30",
		"prepared branches 2",
		"pending transfers 1",
		"open transactions 2",
		"2 transactions are open now: see `ledgerctl txn list`.",
	} {
		if !containsLine(out, want) {
			t.Errorf("missing line %q in:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "only meaningful at quiescence") || strings.Contains(out, "  - ") {
		t.Errorf("output:\n%s", out)
	}

	f.audit = &ledgerv1.AuditResponse{Ok: true}
	code, out, errOut = ledgerctl(t, url, "audit")
	wantCode(t, code, exitOK, out, errOut)
	if !containsLine(out, "No transaction is open now.") || !containsLine(out, "open transactions 0") {
		t.Errorf("output:\n%s", out)
	}

	f.audit = &ledgerv1.AuditResponse{Ok: true, Accounts: 7, OpenTransactions: 1}
	code, out, errOut = ledgerctl(t, url, "--json", "audit")
	wantCode(t, code, exitOK, out, errOut)
	var got ledgerv1.AuditResponse
	if err := protojson.Unmarshal([]byte(out), &got); err != nil || !proto.Equal(&got, f.audit) {
		t.Fatalf("json %v: %v\n%s", &got, err, out)
	}
}

func TestAuditViolations(t *testing.T) {
	f, url := newFake(t)
	f.audit = &ledgerv1.AuditResponse{Accounts: 2, DebitsPosted: 1500, CreditsPosted: 1490, OpenTransactions: 1,
		Violations: []string{
			"shard 101: debits_pending 30 != pending held 20",
			"debits_posted 1500 != credits_posted 1490",
		}}
	code, out, errOut := ledgerctl(t, url, "audit")
	wantCode(t, code, exitFailed, out, errOut)
	for _, want := range []string{
		"audit: FAILED, 2 violations",
		"- shard 101: debits_pending 30 != pending held 20",
		"- debits_posted 1500 != credits_posted 1490",
		"debits posted 1500",
		"credits posted 1490",
		"1 transaction is open now: see `ledgerctl txn list`.",
	} {
		if !containsLine(out, want) {
			t.Errorf("missing line %q in:\n%s", want, out)
		}
	}
	if errOut != "" {
		t.Errorf("stderr:\n%s", errOut)
	}

	// Not ok is a failure even without a reason.
	f.audit = &ledgerv1.AuditResponse{}
	code, out, errOut = ledgerctl(t, url, "audit")
	wantCode(t, code, exitFailed, out, errOut)
	if !containsLine(out, "audit: FAILED (no violation reported)") {
		t.Errorf("output:\n%s", out)
	}

	// JSON keeps the exit code.
	f.audit = &ledgerv1.AuditResponse{Violations: []string{"debits_pending 1 != credits_pending 0"}}
	code, out, errOut = ledgerctl(t, url, "audit", "--json")
	wantCode(t, code, exitFailed, out, errOut)
	if !strings.Contains(out, `"violations"`) || strings.Contains(out, "note:") {
		t.Errorf("output:\n%s", out)
	}

	f.auditErr = connect.NewError(connect.CodeUnavailable, errors.New("totals of shard 101: no leader"))
	code, out, errOut = ledgerctl(t, url, "audit")
	wantCode(t, code, exitRPC, out, errOut)
	if !strings.Contains(errOut, "unavailable: totals of shard 101: no leader") || out != "" {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", out, errOut)
	}
}

func TestTxnList(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(d)) }
	var many []string
	for i := range 20 {
		many = append(many, fmt.Sprintf("transfer-%02d", i))
	}
	long := strings.Repeat("L", 70)

	f, url := newFake(t)
	f.inDoubt = []*ledgerv1.InDoubtTransaction{
		{Id: "x1", CoordinatorGroup: 200, BegunAt: at(-1234 * time.Millisecond), ExpiresAt: at(28800 * time.Millisecond),
			TransferIds: []string{"t1", "t2"}},
		{Id: "x2", CoordinatorGroup: 201, Decision: ledgerv1.TransactionDecision_TRANSACTION_DECISION_COMMIT,
			BegunAt: at(-65 * time.Second), TransferIds: []string{"t3"}},
		{Id: "x3", CoordinatorGroup: 200, Decision: ledgerv1.TransactionDecision_TRANSACTION_DECISION_HOLD,
			BegunAt: at(-(3*time.Hour + 7*time.Minute + 30*time.Second)), ExpiresAt: at(-3100 * time.Millisecond), TransferIds: many},
		{Id: "x4", CoordinatorGroup: 202, Decision: ledgerv1.TransactionDecision_TRANSACTION_DECISION_ABORT,
			BegunAt: at(-50 * time.Hour), TransferIds: []string{long}},
	}
	code, out, errOut := ledgerctlAt(t, clock, url, "txn", "list")
	wantCode(t, code, exitOK, out, errOut)
	if f.lastLimit != 0 {
		t.Fatalf("limit %d sent without --limit", f.lastLimit)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{
		"ID GROUP DECISION AGE EXPIRES TRANSFERS",
		"x1 200 undecided 1.2s in 28.8s t1,t2",
		"x2 201 commit 1m5s - t3",
		"x3 200 hold 3h7m 3.1s ago transfer-00,transfer-01,transfer-02,transfer-03,...(+16)",
		"x4 202 abort 2d2h - " + long[:57] + "...",
	}
	if len(lines) != len(want) {
		t.Fatalf("want %d lines:\n%s", len(want), out)
	}
	for i, w := range want {
		if got := strings.Join(strings.Fields(lines[i]), " "); got != w {
			t.Errorf("line %d %q, want %q", i, got, w)
		}
	}

	// --limit is passed through; a full page says there may be more. in-doubt is an alias.
	code, out, errOut = ledgerctlAt(t, clock, url, "in-doubt", "--limit", "2")
	wantCode(t, code, exitOK, out, errOut)
	if f.lastLimit != 2 {
		t.Fatalf("limit %d sent, want 2", f.lastLimit)
	}
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[2], "x2 ") || lines[3] != "(limit of 2 reached: more transactions may be in doubt)" {
		t.Fatalf("output:\n%s", out)
	}
	code, out, errOut = ledgerctlAt(t, clock, url, "txn", "list", "--limit", "5")
	wantCode(t, code, exitOK, out, errOut)
	if f.lastLimit != 5 || strings.Contains(out, "limit of") {
		t.Fatalf("limit %d, output:\n%s", f.lastLimit, out)
	}

	code, out, errOut = ledgerctlAt(t, clock, url, "--json", "txn", "list", "--limit", "1")
	wantCode(t, code, exitOK, out, errOut)
	var got ledgerv1.ListInDoubtTransactionsResponse
	if err := protojson.Unmarshal([]byte(out), &got); err != nil || len(got.GetTransactions()) != 1 || got.GetTransactions()[0].GetId() != "x1" {
		t.Fatalf("json %v: %v\n%s", &got, err, out)
	}

	f.inDoubt = nil
	for _, args := range [][]string{{"txn", "list"}, {"in-doubt"}} {
		code, out, errOut = ledgerctlAt(t, clock, url, args...)
		wantCode(t, code, exitOK, out, errOut)
		if out != "no transactions in doubt\n" {
			t.Fatalf("%q: output %q", args, out)
		}
	}
}

func TestDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0.0s"},
		{0, "0.0s"},
		{1299 * time.Millisecond, "1.2s"},
		{59990 * time.Millisecond, "59.9s"},
		{time.Minute, "1m0s"},
		{time.Hour - time.Millisecond, "59m59s"},
		{time.Hour, "1h0m"},
		{47*time.Hour + 59*time.Minute + 59*time.Second, "47h59m"},
		{48 * time.Hour, "2d0h"},
		{100*24*time.Hour + 23*time.Hour, "100d23h"},
	} {
		if got := duration(tc.d); got != tc.want {
			t.Errorf("duration(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestTruncateList(t *testing.T) {
	for _, tc := range []struct {
		ids   []string
		width int
		want  string
	}{
		{nil, 10, ""},
		{[]string{"a", "b", "c"}, 5, "a,b,c"},
		{[]string{"a", "b", "c", "d"}, 5, "a,...(+3)"}, // the first id is kept even when the ending overflows
		{[]string{"aa", "bb", "cc", "dd", "ee"}, 12, "aa,...(+4)"},
		{[]string{"aa", "bb", "cc", "dd", "ee"}, 13, "aa,bb,...(+3)"},
		{[]string{"abcdefghij"}, 8, "abcde..."},
		{[]string{"abcdefghijklmnop", "k"}, 14, "abc...,...(+1)"},
		{[]string{"ééééé"}, 8, "éé..."}, // not cut inside a rune
	} {
		got := truncateList(tc.ids, tc.width)
		if got != tc.want {
			t.Errorf("truncateList(%q, %d) = %q, want %q", tc.ids, tc.width, got, tc.want)
		}
	}
}

// containsLine reports whether a line of out equals want, whitespace runs collapsed.
func containsLine(out, want string) bool {
	for l := range strings.SplitSeq(out, "\n") {
		if strings.Join(strings.Fields(l), " ") == want {
			return true
		}
	}
	return false
}

func TestUsageErrors(t *testing.T) {
	_, url := newFake(t)
	for _, args := range [][]string{
		{},
		{"bogus"},
		{"account"},
		{"account", "delete"},
		{"--bogus", "shardmap"},
		{"account", "create", "--currency", "EUR"},
		{"account", "create", "--id", "a"},
		{"account", "create", "--id", "a", "--currency", "EUR", "extra"},
		{"account", "get"},
		{"account", "get", "--bogus", "a"},
		{"transfer", "get"},
		{"transfer", "create", "--from", "a", "--to", "b", "--amount", "1", "--currency", "EUR"},
		{"transfer", "create", "--id", "t", "--to", "b", "--amount", "1", "--currency", "EUR"},
		{"transfer", "create", "--id", "t", "--from", "a", "--to", "b", "--currency", "EUR"},
		{"transfer", "create", "--id", "t", "--from", "a", "--to", "b", "--amount", "abc", "--currency", "EUR"},
		{"transfer", "create", "--id", "t", "--from", "a", "--to", "b", "--amount", "-1", "--currency", "EUR"},
		{"transfer", "create", "--id", "t", "--from", "a", "--to", "b", "--amount", "1", "--currency", "EUR", "--code", "4294967296"},
		{"transfer", "create", "--id", "t", "--from", "a", "--to", "b", "--amount", "1", "--currency", "EUR", "--timeout-seconds", "5"},
		{"transfer", "create", "--id", "t", "--post", "p", "--void", "p"},
		{"transfer", "create", "--id", "t", "--post", "p", "--pending"},
		{"cluster"},
		{"cluster", "status", "extra"},
		{"shardmap", "--timeout", "soon"},
		{"audit", "extra"},
		{"audit", "--limit", "3"},
		{"txn"},
		{"txn", "show"},
		{"txn", "list", "extra"},
		{"txn", "list", "--limit", "-1"},
		{"txn", "list", "--limit", "lots"},
		{"in-doubt", "--limit", "4294967296"},
	} {
		code, out, errOut := ledgerctl(t, url, args...)
		if code != exitUsage {
			t.Errorf("%q: exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", args, code, exitUsage, out, errOut)
		}
		if out != "" {
			t.Errorf("%q: usage error wrote to stdout:\n%s", args, out)
		}
		if !strings.Contains(errOut, "usage: ledgerctl") {
			t.Errorf("%q: stderr without usage:\n%s", args, errOut)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"account", "create", "-h"}} {
		code, out, errOut := ledgerctl(t, "", args...)
		wantCode(t, code, exitOK, out, errOut)
		if !strings.Contains(out+errOut, "usage: ledgerctl") {
			t.Errorf("%q: no usage:\n%s%s", args, out, errOut)
		}
	}
}

func TestRPCErrors(t *testing.T) {
	_, url := newFake(t)
	code, out, errOut := ledgerctl(t, url, "account", "create", "--id", "bad id", "--currency", "EUR")
	wantCode(t, code, exitRPC, out, errOut)
	if !strings.Contains(errOut, "invalid_argument: invalid request") || !strings.Contains(errOut, "accounts[0].id: bad charset") {
		t.Fatalf("stderr:\n%s", errOut)
	}

	code, out, errOut = ledgerctl(t, url, "--timeout", "50ms", "transfer", "create", "--id", "slow", "--post", "p1")
	wantCode(t, code, exitRPC, out, errOut)
	if !strings.Contains(errOut, "deadline_exceeded") {
		t.Fatalf("stderr:\n%s", errOut)
	}

	// Nothing listens there.
	srv := httptest.NewServer(http.NotFoundHandler())
	dead := srv.URL
	srv.Close()
	code, out, errOut = ledgerctl(t, dead, "shardmap")
	wantCode(t, code, exitRPC, out, errOut)
	if !strings.Contains(errOut, "unavailable") {
		t.Fatalf("stderr:\n%s", errOut)
	}
}

func TestAddrAndTokenFromEnv(t *testing.T) {
	f, url := newFake(t)
	t.Setenv("LEDGER_ADDR", strings.TrimPrefix(url, "http://")) // no scheme: http is assumed
	t.Setenv("LEDGER_TOKEN", "s3cret")
	code, out, errOut := ledgerctl(t, "", "cluster", "status")
	wantCode(t, code, exitOK, out, errOut)
	if f.lastAuth != "Bearer s3cret" {
		t.Fatalf("Authorization %q", f.lastAuth)
	}

	// Flags win over the environment, also after the command.
	code, out, errOut = ledgerctl(t, "", "account", "get", "x", "--token", "other")
	wantCode(t, code, exitFailed, out, errOut)
	if f.lastAuth != "Bearer other" {
		t.Fatalf("Authorization %q", f.lastAuth)
	}
	t.Setenv("LEDGER_ADDR", "http://127.0.0.1:1")
	code, out, errOut = ledgerctl(t, url, "cluster", "status")
	wantCode(t, code, exitOK, out, errOut)

	t.Setenv("LEDGER_TOKEN", "")
	code, out, errOut = ledgerctl(t, url, "cluster", "status")
	wantCode(t, code, exitOK, out, errOut)
	if f.lastAuth != "" {
		t.Fatalf("Authorization %q without a token", f.lastAuth)
	}
}

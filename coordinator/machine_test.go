package coordinator_test

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/shardledger/shardledger/coordinator"
	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Table tests of the pure coordinator state machine: Begin, conditional Decide, Forget,
// TCC post/void (every status), expiry on the logged clock, Outcome and the reads.
// Helpers are prefixed mt so they cannot clash with other test files of the package.

// --- harness ---

// mtT0 is the logged clock of the first command of every test coordinator.
const mtT0 = int64(1_700_000_000) * int64(time.Second)

const (
	mtNone   = raftv1.TxnDecision_TXN_DECISION_UNSPECIFIED
	mtCommit = raftv1.TxnDecision_TXN_DECISION_COMMIT
	mtAbort  = raftv1.TxnDecision_TXN_DECISION_ABORT
	mtHold   = raftv1.TxnDecision_TXN_DECISION_HOLD

	mtMalformed = raftv1.Refusal_REFUSAL_MALFORMED

	mtCreated       = ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED
	mtExists        = ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS
	mtIDReused      = ledgerv1.TransferStatus_TRANSFER_STATUS_ID_REUSED
	mtPendingNF     = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_NOT_FOUND
	mtAlreadyPosted = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_ALREADY_POSTED
	mtAlreadyVoided = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_ALREADY_VOIDED
	mtExpired       = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_EXPIRED
	mtInvalidAmount = ledgerv1.TransferStatus_TRANSFER_STATUS_INVALID_AMOUNT
	mtCurrency      = ledgerv1.TransferStatus_TRANSFER_STATUS_CURRENCY_MISMATCH
	mtInsufficient  = ledgerv1.TransferStatus_TRANSFER_STATUS_INSUFFICIENT_FUNDS
	mtLinkedFailed  = ledgerv1.TransferStatus_TRANSFER_STATUS_LINKED_EVENT_FAILED

	mtStateNone    = ledgerv1.TransferState_TRANSFER_STATE_UNSPECIFIED
	mtStatePending = ledgerv1.TransferState_TRANSFER_STATE_PENDING
	mtStatePosted  = ledgerv1.TransferState_TRANSFER_STATE_POSTED
	mtStateVoided  = ledgerv1.TransferState_TRANSFER_STATE_VOIDED
	mtStateExpired = ledgerv1.TransferState_TRANSFER_STATE_EXPIRED

	mtPrepared      = raftv1.BranchState_BRANCH_STATE_PREPARED
	mtCommittedVote = raftv1.BranchState_BRANCH_STATE_COMMITTED
	mtRefused       = raftv1.BranchState_BRANCH_STATE_REFUSED
)

// mtCoord is one coordinator group over a MemStore: every command runs in its own
// Applier whose overlay is committed, like a raft entry with one command.
type mtCoord struct {
	t     testing.TB
	store *ledger.MemStore
	now   int64 // the clock of the last command sent
}

func newMTCoord(t testing.TB) *mtCoord {
	t.Helper()
	c := &mtCoord{t: t, store: ledger.NewMemStore(), now: mtT0}
	// An ExpireTxns of nothing initialises the group state (and its clock).
	if r := c.applyAt(mtT0, mtExpire()); r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
		t.Fatalf("init: %v", r)
	}
	return c
}

// newMTCoordWithOther returns a coordinator holding one open txn, "other", beside the
// ones a test adds (what the test does must leave it alone).
func newMTCoordWithOther(t testing.TB) *mtCoord {
	t.Helper()
	c := newMTCoord(t)
	c.begin(mtXfer("other", "a", "b", 1))
	return c
}

// applyAt applies cmd with the logged clock ts in a fresh Applier and commits its overlay.
func (c *mtCoord) applyAt(ts int64, cmd *raftv1.Command) *raftv1.CommandResult {
	c.t.Helper()
	cmd.TimestampUnixNano = ts
	a, err := coordinator.NewApplier(c.store)
	if err != nil {
		c.t.Fatalf("new applier: %v", err)
	}
	r, err := a.Apply(cmd)
	if err != nil {
		c.t.Fatalf("apply %v: %v", cmd, err)
	}
	c.store.Commit(a.Overlay())
	return r
}

// apply applies cmd one millisecond after the previous command.
func (c *mtCoord) apply(cmd *raftv1.Command) *raftv1.CommandResult {
	c.t.Helper()
	c.now += int64(time.Millisecond)
	return c.applyAt(c.now, cmd)
}

// advance moves the test clock (the next command carries it).
func (c *mtCoord) advance(d time.Duration) { c.now += int64(d) }

func (c *mtCoord) txn(id string) *raftv1.TxnRecord {
	c.t.Helper()
	rec, err := coordinator.ReadTxn(c.store, id)
	if err != nil {
		c.t.Fatalf("read txn %q: %v", id, err)
	}
	return rec
}

func (c *mtCoord) openIDs() []string {
	c.t.Helper()
	recs, err := coordinator.ReadOpen(c.store)
	if err != nil {
		c.t.Fatalf("read open: %v", err)
	}
	ids := make([]string, 0, len(recs))
	for _, r := range recs {
		ids = append(ids, r.TxnId)
	}
	slices.Sort(ids) // ReadOpen lists them in the order they were created
	return ids
}

func (c *mtCoord) openCount() uint64 {
	c.t.Helper()
	a, err := coordinator.NewApplier(c.store)
	if err != nil {
		c.t.Fatalf("new applier: %v", err)
	}
	return a.State().GetOpenCount()
}

func (c *mtCoord) clock() int64 {
	c.t.Helper()
	a, err := coordinator.NewApplier(c.store)
	if err != nil {
		c.t.Fatalf("new applier: %v", err)
	}
	return a.State().GetLastTimestampUnixNano()
}

// read answers ReadTransfers for ids.
func (c *mtCoord) read(ids ...string) (map[string]*ledgerv1.Transfer, []string) {
	c.t.Helper()
	found, nf, err := coordinator.ReadTransfers(c.store, ids)
	if err != nil {
		c.t.Fatalf("read transfers: %v", err)
	}
	m := map[string]*ledgerv1.Transfer{}
	for _, t := range found {
		m[t.Id] = t
	}
	return m, nf
}

// mustRefuse applies cmd (at a later clock) and checks it is refused with no effect.
func (c *mtCoord) mustRefuse(cmd *raftv1.Command, wantMsg string) {
	c.t.Helper()
	before := c.store.Hash()
	r := c.applyAt(c.now+int64(time.Hour), cmd)
	if r.GetRefusal() != mtMalformed {
		c.t.Fatalf("%v: want refusal MALFORMED, got %v", cmd, r)
	}
	if wantMsg != "" && !strings.Contains(r.GetMessage(), wantMsg) {
		c.t.Errorf("refusal message %q does not mention %q", r.GetMessage(), wantMsg)
	}
	if r.GetTxn() != nil || len(r.GetTransfers()) != 0 {
		c.t.Errorf("a refusal carries a result: %v", r)
	}
	if after := c.store.Hash(); !bytes.Equal(before, after) {
		c.t.Fatalf("refused %v changed the state", cmd)
	}
}

// begin begins ts (a chain: linked set on all but the last) and checks it is new.
func (c *mtCoord) begin(ts ...*ledgerv1.Transfer) *raftv1.TxnRecord {
	c.t.Helper()
	r := c.apply(mtBegin(mtChain(ts...)...))
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED || r.GetTxn() == nil || r.GetExisted() {
		c.t.Fatalf("begin %s: %v", ts[0].Id, r)
	}
	return r.Txn
}

// decide logs d and returns the record after it (refusals are fatal).
func (c *mtCoord) decide(cmd *raftv1.Command) *raftv1.TxnRecord {
	c.t.Helper()
	r := c.apply(cmd)
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED || r.GetTxn() == nil {
		c.t.Fatalf("%v: %v", cmd, r)
	}
	return r.Txn
}

// commit decides COMMIT with every vote yes.
func (c *mtCoord) commit(id string) *raftv1.TxnRecord {
	c.t.Helper()
	return c.decide(mtDecide(id, mtCommit, mtYes(c.txn(id))...))
}

// hold begins a pending transfer and decides HOLD with every vote yes.
func (c *mtCoord) hold(p *ledgerv1.Transfer) *raftv1.TxnRecord {
	c.t.Helper()
	c.begin(p)
	rec := c.decide(mtDecide(p.Id, mtHold, mtYes(c.txn(p.Id))...))
	if rec.Decision != mtHold || rec.PendingState != mtStatePending {
		c.t.Fatalf("hold %s: %v", p.Id, rec)
	}
	return rec
}

// resolve applies a post or void and returns its one transfer result and the result.
func (c *mtCoord) resolve(t *ledgerv1.Transfer) (*ledgerv1.TransferResult, *raftv1.CommandResult) {
	c.t.Helper()
	r := c.apply(mtResolve(t))
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED || len(r.GetTransfers()) != 1 || r.Transfers[0].Id != t.Id {
		c.t.Fatalf("resolve %v: %v", t, r)
	}
	return r.Transfers[0], r
}

// --- builders ---

func mtXfer(id, dr, cr string, amount uint64) *ledgerv1.Transfer {
	return &ledgerv1.Transfer{Id: id, DebitAccountId: dr, CreditAccountId: cr, Amount: amount, Currency: "USD"}
}

func mtPendingXfer(id string, amount uint64, timeoutSeconds uint32) *ledgerv1.Transfer {
	t := mtXfer(id, "alice", "bob", amount)
	t.Pending, t.TimeoutSeconds = true, timeoutSeconds
	return t
}

func mtPost(id, pid string, amount uint64) *ledgerv1.Transfer {
	return &ledgerv1.Transfer{Id: id, PostPendingId: pid, Amount: amount}
}

func mtVoid(id, pid string) *ledgerv1.Transfer {
	return &ledgerv1.Transfer{Id: id, VoidPendingId: pid}
}

// mtChain clones ts and links all but the last.
func mtChain(ts ...*ledgerv1.Transfer) []*ledgerv1.Transfer {
	out := make([]*ledgerv1.Transfer, len(ts))
	for i, t := range ts {
		out[i] = proto.Clone(t).(*ledgerv1.Transfer)
		out[i].Linked = i < len(ts)-1
	}
	return out
}

// mtBegin begins ts as they are, with the first transfer's id as txn id.
func mtBegin(ts ...*ledgerv1.Transfer) *raftv1.Command {
	id := ""
	if len(ts) > 0 {
		id = ts[0].GetId()
	}
	return mtBeginID(id, ts...)
}

func mtBeginID(txnID string, ts ...*ledgerv1.Transfer) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_BeginTxn{BeginTxn: &raftv1.BeginTxn{TxnId: txnID, Transfers: ts}}}
}

func mtDecide(id string, d raftv1.TxnDecision, votes ...*raftv1.Vote) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: &raftv1.DecideTxn{TxnId: id, Decision: d,
		Votes: votes, FailedIndex: -1}}}
}

// mtAbortCmd is an abort carrying the no vote an abort needs (branch 0 refused).
func mtAbortCmd(id string, st ledgerv1.TransferStatus, msg string, failedIndex int32) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: &raftv1.DecideTxn{TxnId: id, Decision: mtAbort,
		Status: st, Message: msg, FailedIndex: failedIndex, Votes: []*raftv1.Vote{mtNo(id, 0)}}}}
}

// mtNo is a REFUSED vote for branch index of txn id.
func mtNo(id string, index uint32) *raftv1.Vote {
	return &raftv1.Vote{TxnId: id, Index: index, State: raftv1.BranchState_BRANCH_STATE_REFUSED, Status: mtInsufficient}
}

// mtYes is a PREPARED vote for every branch of rec.
func mtYes(rec *raftv1.TxnRecord) []*raftv1.Vote {
	var vs []*raftv1.Vote
	for i := range 2 * len(rec.GetTransfers()) {
		vs = append(vs, &raftv1.Vote{TxnId: rec.TxnId, Index: uint32(i), State: mtPrepared})
	}
	return vs
}

func mtForget(id string) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_ForgetTxn{ForgetTxn: &raftv1.ForgetTxn{TxnId: id}}}
}

func mtResolve(t *ledgerv1.Transfer) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_ResolvePending{ResolvePending: &raftv1.ResolvePending{Transfer: t}}}
}

func mtExpire(ids ...string) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_ExpireTxns{ExpireTxns: &raftv1.ExpireTxns{TxnIds: ids}}}
}

// mtClientView is what a client sends again: the transfers without ledger-set fields.
func mtClientView(ts []*ledgerv1.Transfer) []*ledgerv1.Transfer {
	out := make([]*ledgerv1.Transfer, len(ts))
	for i, t := range ts {
		out[i] = proto.Clone(t).(*ledgerv1.Transfer)
		out[i].CreatedAt, out[i].State = nil, mtStateNone
	}
	return out
}

func mtStatuses(rs []*ledgerv1.TransferResult) []ledgerv1.TransferStatus {
	out := make([]ledgerv1.TransferStatus, len(rs))
	for i, r := range rs {
		out[i] = r.GetStatus()
	}
	return out
}

// --- Begin ---

func TestBeginNew(t *testing.T) {
	c := newMTCoord(t)
	r := c.apply(mtBegin(mtChain(mtXfer("t1", "a", "b", 5), mtXfer("t2", "c", "d", 7))...))
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED || r.GetExisted() || len(r.GetTransfers()) != 0 {
		t.Fatalf("begin: %v", r)
	}
	rec := r.GetTxn()
	if rec.TxnId != "t1" || rec.Decision != mtNone || rec.FailedIndex != -1 || rec.Forgotten ||
		rec.BegunAtUnixNano != c.now || rec.ExpiresAtUnixNano != 0 || rec.PendingState != mtStateNone {
		t.Fatalf("new record: %v", rec)
	}
	if len(rec.Transfers) != 2 || rec.Transfers[0].Id != "t1" || rec.Transfers[1].Id != "t2" ||
		!rec.Transfers[0].Linked || rec.Transfers[1].Linked {
		t.Fatalf("transfers: %v", rec.Transfers)
	}
	for _, tr := range rec.Transfers {
		if !tr.CreatedAt.AsTime().Equal(time.Unix(0, c.now)) {
			t.Errorf("%s created_at %v, want the logged clock", tr.Id, tr.CreatedAt.AsTime())
		}
	}
	want := []*raftv1.Branch{
		{TxnId: "t1", Index: 0, AccountId: "a", Debit: true, Amount: 5, Currency: "USD"},
		{TxnId: "t1", Index: 1, AccountId: "b", Amount: 5, Currency: "USD"},
		{TxnId: "t1", Index: 2, AccountId: "c", Debit: true, Amount: 7, Currency: "USD"},
		{TxnId: "t1", Index: 3, AccountId: "d", Amount: 7, Currency: "USD"},
	}
	if len(rec.Branches) != len(want) {
		t.Fatalf("branches: %v", rec.Branches)
	}
	for i := range want {
		if !proto.Equal(rec.Branches[i], want[i]) {
			t.Errorf("branch %d: %v, want %v", i, rec.Branches[i], want[i])
		}
		if coordinator.TransferOf(rec.Branches[i].Index) != i/2 {
			t.Errorf("TransferOf(%d) = %d", rec.Branches[i].Index, coordinator.TransferOf(rec.Branches[i].Index))
		}
	}
	if got := c.txn("t1"); !proto.Equal(got, rec) {
		t.Errorf("stored record %v differs from the result %v", got, rec)
	}
	if ids := c.openIDs(); !slices.Equal(ids, []string{"t1"}) {
		t.Errorf("open %v", ids)
	}
	if n := c.openCount(); n != 1 {
		t.Errorf("open count %d", n)
	}
	// The second transfer of the chain is not a transaction of its own.
	if got := c.txn("t2"); got != nil {
		t.Errorf("t2 has a record of its own: %v", got)
	}
}

func TestBeginPendingExpiry(t *testing.T) {
	c := newMTCoord(t)
	with := c.begin(mtPendingXfer("p1", 10, 30))
	if with.ExpiresAtUnixNano != with.BegunAtUnixNano+30*int64(time.Second) {
		t.Errorf("expires at %d, begun at %d", with.ExpiresAtUnixNano, with.BegunAtUnixNano)
	}
	without := c.begin(mtPendingXfer("p2", 10, 0))
	if without.ExpiresAtUnixNano != 0 {
		t.Errorf("no timeout: expires at %d", without.ExpiresAtUnixNano)
	}
}

func TestBeginRetryAndReuse(t *testing.T) {
	type tc struct {
		name string
		// setup runs on a coordinator holding txn "t1" = [t1 a->b 5, t2 c->d 7] (a chain),
		// txn "s1" = [s1 a->b 3], pending txn "p1" held and post "post1" of it.
		setup   func(c *mtCoord)
		begin   []*ledgerv1.Transfer
		existed bool // else ID_REUSED for every transfer
	}
	chain := mtChain(mtXfer("t1", "a", "b", 5), mtXfer("t2", "c", "d", 7))
	cases := []tc{
		{name: "retry chain same fields", begin: chain, existed: true},
		{name: "retry single same fields", begin: []*ledgerv1.Transfer{mtXfer("s1", "a", "b", 3)}, existed: true},
		{name: "retry after commit", setup: func(c *mtCoord) { c.commit("t1") }, begin: chain, existed: true},
		{name: "retry after abort", setup: func(c *mtCoord) { c.decide(mtAbortCmd("t1", mtInsufficient, "no", 0)) }, begin: chain, existed: true},
		{name: "retry after forget", setup: func(c *mtCoord) { c.commit("t1"); c.decide(mtForget("t1")) }, begin: chain, existed: true},
		{name: "retry pending after post", begin: []*ledgerv1.Transfer{mtPendingXfer("p1", 10, 60)}, existed: true},
		{name: "different amount", begin: mtChain(mtXfer("t1", "a", "b", 6), mtXfer("t2", "c", "d", 7))},
		{name: "different second transfer", begin: mtChain(mtXfer("t1", "a", "b", 5), mtXfer("t2", "c", "e", 7))},
		{name: "different code", begin: func() []*ledgerv1.Transfer {
			ts := mtChain(mtXfer("t1", "a", "b", 5), mtXfer("t2", "c", "d", 7))
			ts[1].Code = 9
			return ts
		}()},
		{name: "different user data", begin: func() []*ledgerv1.Transfer {
			ts := []*ledgerv1.Transfer{mtXfer("s1", "a", "b", 3)}
			ts[0].UserData = "x"
			return ts
		}()},
		{name: "shorter chain", begin: []*ledgerv1.Transfer{mtXfer("t1", "a", "b", 5)}},
		{name: "longer chain", begin: mtChain(mtXfer("t1", "a", "b", 5), mtXfer("t2", "c", "d", 7), mtXfer("t3", "c", "d", 7))},
		{name: "second transfer of a chain alone", begin: []*ledgerv1.Transfer{mtXfer("t2", "c", "d", 7)}},
		{name: "second transfer of a chain first", begin: mtChain(mtXfer("t2", "c", "d", 7), mtXfer("t9", "c", "d", 7))},
		{name: "another txn's id inside a chain", begin: mtChain(mtXfer("n1", "a", "b", 1), mtXfer("s1", "a", "b", 3))},
		{name: "a post's id", begin: []*ledgerv1.Transfer{mtXfer("post1", "a", "b", 1)}},
		{name: "a failed post's id", setup: func(c *mtCoord) {
			if r, _ := c.resolve(mtPost("bad1", "nope", 0)); r.Status != mtPendingNF {
				c.t.Fatalf("post to nothing: %v", r)
			}
		}, begin: []*ledgerv1.Transfer{mtXfer("bad1", "a", "b", 1)}},
		{name: "pending retried as not pending", begin: []*ledgerv1.Transfer{mtXfer("p1", "alice", "bob", 10)}},
		{name: "pending retried with another timeout", begin: []*ledgerv1.Transfer{mtPendingXfer("p1", 10, 61)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newMTCoord(t)
			c.begin(chain...)
			c.begin(mtXfer("s1", "a", "b", 3))
			c.hold(mtPendingXfer("p1", 10, 60))
			if r, _ := c.resolve(mtPost("post1", "p1", 4)); r.Status != mtCreated {
				t.Fatalf("post: %v", r)
			}
			if tc.setup != nil {
				tc.setup(c)
			}
			id := tc.begin[0].Id
			before := c.txn(id)
			open := c.openIDs()
			r := c.apply(mtBegin(tc.begin...))
			if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
				t.Fatalf("refused: %v", r)
			}
			if tc.existed {
				if !r.Existed || !proto.Equal(r.Txn, before) || len(r.Transfers) != 0 {
					t.Fatalf("retry: %v, want existed with %v", r, before)
				}
			} else {
				if r.Existed || r.Txn != nil || len(r.Transfers) != len(tc.begin) {
					t.Fatalf("reuse: %v", r)
				}
				for i, tr := range r.Transfers {
					if tr.Id != tc.begin[i].Id || tr.Status != mtIDReused {
						t.Errorf("result %d: %v", i, tr)
					}
				}
			}
			if after := c.txn(id); !proto.Equal(after, before) {
				t.Errorf("record changed: %v -> %v", before, after)
			}
			if got := c.openIDs(); !slices.Equal(got, open) {
				t.Errorf("open %v -> %v", open, got)
			}
			// Nothing of a refused reuse is indexed: the new ids stay free for reads.
			for _, tr := range tc.begin {
				if tr.Id == "n1" || tr.Id == "t9" || tr.Id == "t3" {
					if _, nf := c.read(tr.Id); len(nf) != 1 {
						t.Errorf("%s became known", tr.Id)
					}
				}
			}
		})
	}
}

func TestBeginMalformed(t *testing.T) {
	ok := func() *ledgerv1.Transfer { return mtXfer("m1", "a", "b", 5) }
	with := func(f func(t *ledgerv1.Transfer)) *ledgerv1.Transfer { t := ok(); f(t); return t }
	long := strings.Repeat("x", ledger.IDLengthMax+1)
	cases := []struct {
		name string
		cmd  *raftv1.Command
		msg  string
	}{
		{"no transfers", mtBeginID("m1"), "transfers"},
		{"empty txn id", mtBeginID("", ok()), "txn_id"},
		{"bad txn id charset", mtBeginID("m 1", with(func(t *ledgerv1.Transfer) { t.Id = "m 1" })), "txn_id"},
		{"txn id too long", mtBeginID(long, with(func(t *ledgerv1.Transfer) { t.Id = long })), "txn_id"},
		{"txn id is not the first transfer's", mtBeginID("other", ok()), "first transfer"},
		{"txn id is the second transfer's", mtBeginID("m2", mtChain(ok(), mtXfer("m2", "a", "b", 1))...), "first transfer"},
		{"single linked", mtBegin(with(func(t *ledgerv1.Transfer) { t.Linked = true })), "chain"},
		{"chain not closed", mtBegin(with(func(t *ledgerv1.Transfer) { t.Linked = true }),
			&ledgerv1.Transfer{Id: "m2", DebitAccountId: "a", CreditAccountId: "b", Amount: 1, Currency: "USD", Linked: true}), "chain"},
		{"two chains", mtBegin(ok(), mtXfer("m2", "a", "b", 1)), "chain"},
		{"break inside a chain", mtBegin(with(func(t *ledgerv1.Transfer) { t.Linked = true }), mtXfer("m2", "a", "b", 1),
			mtXfer("m3", "a", "b", 1)), "chain"},
		{"pending in a chain", mtBegin(mtChain(mtPendingXfer("m1", 5, 0), mtXfer("m2", "a", "b", 1))...), "pending"},
		{"pending second in a chain", mtBegin(mtChain(ok(), mtPendingXfer("m2", 5, 0))...), "pending"},
		{"post in a txn", mtBegin(with(func(t *ledgerv1.Transfer) { t.PostPendingId = "p" })), "posts and voids"},
		{"void in a txn", mtBegin(with(func(t *ledgerv1.Transfer) { t.VoidPendingId = "p" })), "posts and voids"},
		{"bare post in a txn", mtBegin(mtPost("m1", "p", 0)), "posts and voids"},
		{"bad debit account", mtBegin(with(func(t *ledgerv1.Transfer) { t.DebitAccountId = "" })), "debit_account_id"},
		{"bad credit account", mtBegin(with(func(t *ledgerv1.Transfer) { t.CreditAccountId = "a/b" })), "credit_account_id"},
		{"bad currency", mtBegin(with(func(t *ledgerv1.Transfer) { t.Currency = "usd" })), "currency"},
		{"user data too long", mtBegin(with(func(t *ledgerv1.Transfer) { t.UserData = strings.Repeat("u", 257) })), "user_data"},
		{"timeout without pending", mtBegin(with(func(t *ledgerv1.Transfer) { t.TimeoutSeconds = 5 })), "timeout"},
		{"timeout too long", mtBegin(mtPendingXfer("m1", 5, ledger.TimeoutSecondsMax+1)), "timeout"},
		{"created_at set", mtBegin(with(func(t *ledgerv1.Transfer) { t.CreatedAt = timestamppb.Now() })), "created_at"},
		{"state set", mtBegin(with(func(t *ledgerv1.Transfer) { t.State = mtStatePending })), "state"},
		{"bad second transfer", mtBegin(mtChain(ok(), mtXfer("m2", "a", "b", 1))[0], &ledgerv1.Transfer{Id: "m2"}), "transfer 1"},
		{"an id twice in a chain", mtBegin(mtChain(ok(), ok())...), "twice"},
		{"an id twice, different fields", mtBegin(mtChain(ok(), mtXfer("m2", "a", "b", 1), mtXfer("m2", "c", "d", 2))...), "twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newMTCoord(t)
			c.begin(mtXfer("old", "a", "b", 1))
			c.mustRefuse(tc.cmd, tc.msg)
			if got := c.openIDs(); !slices.Equal(got, []string{"old"}) {
				t.Errorf("open %v", got)
			}
			if _, nf := c.read("m1", "m2", "m3"); len(nf) != 3 {
				t.Errorf("a refused begin left transfers behind")
			}
		})
	}
	t.Run("too many transfers", func(t *testing.T) {
		c := newMTCoord(t)
		ts := make([]*ledgerv1.Transfer, ledger.BatchItemsMax+1)
		for i := range ts {
			ts[i] = mtXfer(fmt.Sprintf("m%d", i), "a", "b", 1)
		}
		c.mustRefuse(mtBegin(mtChain(ts...)...), "transfers")
	})
	t.Run("not a coordinator command", func(t *testing.T) {
		c := newMTCoord(t)
		c.mustRefuse(&raftv1.Command{Op: &raftv1.Command_CreateTransfers{CreateTransfers: &raftv1.CreateTransfers{}}}, "not for a coordinator")
		c.mustRefuse(&raftv1.Command{}, "not for a coordinator")
	})
}

// --- Decide ---

func TestDecide(t *testing.T) {
	type tc struct {
		name    string
		pending bool
		chain   int // transfers (non-pending)
		cmd     func(rec *raftv1.TxnRecord) *raftv1.Command
		refused string // refusal message fragment; "" when applied
		check   func(t *testing.T, rec *raftv1.TxnRecord)
	}
	without := func(vs []*raftv1.Vote, i int) []*raftv1.Vote { return append(slices.Clone(vs[:i]), vs[i+1:]...) }
	cases := []tc{
		{name: "commit with every vote yes", chain: 2,
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtDecide(rec.TxnId, mtCommit, mtYes(rec)...) },
			check: func(t *testing.T, rec *raftv1.TxnRecord) {
				if rec.Decision != mtCommit || rec.PendingState != mtStateNone || rec.FailedIndex != -1 {
					t.Errorf("commit: %v", rec)
				}
			}},
		{name: "commit with votes shuffled, duplicated, foreign and extra", chain: 2,
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				vs := mtYes(rec)
				slices.Reverse(vs)
				vs = append(vs, vs[0], &raftv1.Vote{TxnId: "other", Index: 0, State: mtPrepared},
					&raftv1.Vote{TxnId: rec.TxnId, Index: 99, State: mtPrepared})
				return mtDecide(rec.TxnId, mtCommit, vs...)
			},
			check: func(t *testing.T, rec *raftv1.TxnRecord) {
				if rec.Decision != mtCommit {
					t.Errorf("commit: %v", rec)
				}
			}},
		{name: "commit without votes", chain: 1, refused: "branch 0",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtDecide(rec.TxnId, mtCommit) }},
		{name: "commit missing the last credit vote", chain: 2, refused: "branch 3",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				return mtDecide(rec.TxnId, mtCommit, without(mtYes(rec), 3)...)
			}},
		{name: "commit missing a middle debit vote", chain: 3, refused: "branch 2",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				return mtDecide(rec.TxnId, mtCommit, without(mtYes(rec), 2)...)
			}},
		{name: "commit with a no vote", chain: 1, refused: "branch 1",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				vs := mtYes(rec)
				vs[1].State, vs[1].Status = mtRefused, mtInsufficient
				return mtDecide(rec.TxnId, mtCommit, vs...)
			}},
		// A router posts the branches of a transaction it answered before it logs the
		// decision; dying between, a recovery reads COMMITTED back: a yes vote.
		{name: "commit with committed and prepared votes", chain: 1,
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				vs := mtYes(rec)
				vs[0].State = raftv1.BranchState_BRANCH_STATE_COMMITTED
				return mtDecide(rec.TxnId, mtCommit, vs...)
			},
			check: func(t *testing.T, rec *raftv1.TxnRecord) {
				if rec.Decision != mtCommit || rec.Forgotten {
					t.Errorf("commit: %v", rec)
				}
			}},
		{name: "commit with an aborted vote", chain: 1, refused: "branch 1",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				vs := mtYes(rec)
				vs[1].State = raftv1.BranchState_BRANCH_STATE_ABORTED
				return mtDecide(rec.TxnId, mtCommit, vs...)
			}},
		{name: "commit with another txn's votes", chain: 1, refused: "branch 0",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				vs := mtYes(rec)
				for _, v := range vs {
					v.TxnId = "other"
				}
				return mtDecide(rec.TxnId, mtCommit, vs...)
			}},
		{name: "commit of a pending txn", pending: true, refused: "pending",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtDecide(rec.TxnId, mtCommit, mtYes(rec)...) }},
		{name: "hold of a pending txn", pending: true,
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtDecide(rec.TxnId, mtHold, mtYes(rec)...) },
			check: func(t *testing.T, rec *raftv1.TxnRecord) {
				if rec.Decision != mtHold || rec.PendingState != mtStatePending {
					t.Errorf("hold: %v", rec)
				}
			}},
		{name: "hold of a pending txn missing a vote", pending: true, refused: "branch 0",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				return mtDecide(rec.TxnId, mtHold, without(mtYes(rec), 0)...)
			}},
		{name: "hold of a plain txn", chain: 1, refused: "pending",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtDecide(rec.TxnId, mtHold, mtYes(rec)...) }},
		{name: "abort with status and failed index", chain: 3,
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				return mtAbortCmd(rec.TxnId, mtInsufficient, "not enough", 1)
			},
			check: func(t *testing.T, rec *raftv1.TxnRecord) {
				if rec.Decision != mtAbort || rec.Status != mtInsufficient || rec.Message != "not enough" || rec.FailedIndex != 1 {
					t.Errorf("abort: %v", rec)
				}
			}},
		{name: "abort with yes votes beside the no vote", chain: 1,
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				c := mtAbortCmd(rec.TxnId, mtInsufficient, "", -1)
				c.GetDecideTxn().Votes = append(mtYes(rec)[1:], mtNo(rec.TxnId, 0))
				return c
			},
			check: func(t *testing.T, rec *raftv1.TxnRecord) {
				if rec.Decision != mtAbort || rec.FailedIndex != -1 {
					t.Errorf("abort: %v", rec)
				}
			}},
		{name: "abort with failed index past the chain", chain: 2,
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtAbortCmd(rec.TxnId, mtInsufficient, "", 2) },
			check: func(t *testing.T, rec *raftv1.TxnRecord) {
				if rec.FailedIndex != -1 {
					t.Errorf("failed index %d, want -1", rec.FailedIndex)
				}
			}},
		{name: "abort with a negative failed index", chain: 2,
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtAbortCmd(rec.TxnId, mtInsufficient, "", -7) },
			check: func(t *testing.T, rec *raftv1.TxnRecord) {
				if rec.FailedIndex != -1 {
					t.Errorf("failed index %d, want -1", rec.FailedIndex)
				}
			}},
		{name: "abort of a pending txn (the try failed)", pending: true,
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtAbortCmd(rec.TxnId, mtInsufficient, "", 0) },
			check: func(t *testing.T, rec *raftv1.TxnRecord) {
				if rec.Decision != mtAbort || rec.PendingState != mtStateNone {
					t.Errorf("abort: %v", rec)
				}
			}},
		{name: "abort without a vote", chain: 1, refused: "abort without a no vote",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				c := mtAbortCmd(rec.TxnId, mtInsufficient, "", -1)
				c.GetDecideTxn().Votes = nil
				return c
			}},
		{name: "abort with yes votes only (every branch prepared: committed)", chain: 2, refused: "abort without a no vote",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				c := mtAbortCmd(rec.TxnId, mtInsufficient, "", -1)
				c.GetDecideTxn().Votes = mtYes(rec)
				return c
			}},
		{name: "abort with another txn's no vote", chain: 1, refused: "abort without a no vote",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				c := mtAbortCmd(rec.TxnId, mtInsufficient, "", -1)
				c.GetDecideTxn().Votes = []*raftv1.Vote{mtNo("other", 0)}
				return c
			}},
		{name: "abort with a no vote for a branch it does not have", chain: 1, refused: "abort without a no vote",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command {
				c := mtAbortCmd(rec.TxnId, mtInsufficient, "", -1)
				c.GetDecideTxn().Votes = []*raftv1.Vote{mtNo(rec.TxnId, 2)}
				return c
			}},
		{name: "no decision", chain: 1, refused: "no decision",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtDecide(rec.TxnId, mtNone, mtYes(rec)...) }},
		{name: "unknown decision", chain: 1, refused: "no decision",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtDecide(rec.TxnId, 99, mtYes(rec)...) }},
		{name: "unknown txn", chain: 1, refused: "unknown txn",
			cmd: func(rec *raftv1.TxnRecord) *raftv1.Command { return mtDecide("nope", mtCommit, mtYes(rec)...) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newMTCoord(t)
			var rec *raftv1.TxnRecord
			if tc.pending {
				rec = c.begin(mtPendingXfer("d1", 10, 60))
			} else {
				var ts []*ledgerv1.Transfer
				for i := range tc.chain {
					ts = append(ts, mtXfer("d"+string(rune('1'+i)), "a", "b", uint64(10+i)))
				}
				rec = c.begin(ts...)
			}
			cmd := tc.cmd(rec)
			if tc.refused != "" {
				c.mustRefuse(cmd, tc.refused)
				if got := c.txn(rec.TxnId); !proto.Equal(got, rec) {
					t.Errorf("record changed: %v", got)
				}
				return
			}
			got := c.decide(cmd)
			if got.DecidedAtUnixNano != c.now {
				t.Errorf("decided at %d, want %d", got.DecidedAtUnixNano, c.now)
			}
			if stored := c.txn(rec.TxnId); !proto.Equal(stored, got) {
				t.Errorf("stored %v, result %v", stored, got)
			}
			if ids := c.openIDs(); !slices.Equal(ids, []string{rec.TxnId}) {
				t.Errorf("a decided txn stays open until forgotten: %v", ids)
			}
			tc.check(t, got)
		})
	}
}

// TestDecideConditional: the first decision stands; a later one (same or different)
// answers the record unchanged and is not a refusal.
func TestDecideConditional(t *testing.T) {
	type step = func(c *mtCoord, id string) *raftv1.Command
	commit := func(c *mtCoord, id string) *raftv1.Command { return mtDecide(id, mtCommit, mtYes(c.txn(id))...) }
	hold := func(c *mtCoord, id string) *raftv1.Command { return mtDecide(id, mtHold, mtYes(c.txn(id))...) }
	abort := func(c *mtCoord, id string) *raftv1.Command { return mtAbortCmd(id, mtInsufficient, "first", 0) }
	abort2 := func(c *mtCoord, id string) *raftv1.Command {
		return mtAbortCmd(id, ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT, "second", -1)
	}
	cases := []struct {
		name          string
		pending       bool
		first, second step
	}{
		{"commit then abort", false, commit, abort},
		{"abort then commit", false, abort, commit},
		{"commit then commit", false, commit, commit},
		{"abort then another abort", false, abort, abort2},
		{"hold then abort", true, hold, abort},
		{"abort then hold", true, abort, hold},
		{"hold then hold", true, hold, hold},
		{"hold then commit (refused shape)", true, hold, commit},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newMTCoord(t)
			if tc.pending {
				c.begin(mtPendingXfer("x1", 10, 0))
			} else {
				c.begin(mtXfer("x1", "a", "b", 10))
			}
			first := c.decide(tc.first(c, "x1"))
			c.advance(time.Second)
			r := c.apply(tc.second(c, "x1"))
			if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED || !proto.Equal(r.GetTxn(), first) {
				t.Fatalf("second decision: %v, want the first record %v", r, first)
			}
			if got := c.txn("x1"); !proto.Equal(got, first) {
				t.Fatalf("record changed: %v -> %v", first, got)
			}
		})
	}
}

// TestDecideAndForget: a COMMIT carrying forget (its router committed every branch)
// decides and closes the record in one command; it closes a commit that stands, leaves
// any other decision as it is, and goes with nothing but the commit of a begun txn.
func TestDecideAndForget(t *testing.T) {
	forget := func(cmd *raftv1.Command) *raftv1.Command {
		cmd.GetDecideTxn().Forget = true
		return cmd
	}
	closeCommit := func(c *mtCoord) *raftv1.Command { return forget(mtDecide("d1", mtCommit, mtYes(c.txn("d1"))...)) }
	cases := []struct {
		name    string
		setup   func(c *mtCoord) // leaves txn "d1" (or not)
		cmd     func(c *mtCoord) *raftv1.Command
		refused string
		// want: the decision that stands after the command and whether d1 is closed.
		want   raftv1.TxnDecision
		closed bool
	}{
		{name: "undecided: decided and closed", setup: func(c *mtCoord) { c.begin(mtXfer("d1", "a", "b", 1)) },
			cmd: closeCommit, want: mtCommit, closed: true},
		{name: "undecided chain, committed votes: decided and closed", setup: func(c *mtCoord) {
			c.begin(mtXfer("d1", "a", "b", 1), mtXfer("d2", "b", "c", 1))
		}, cmd: func(c *mtCoord) *raftv1.Command {
			vs := mtYes(c.txn("d1"))
			for _, v := range vs {
				v.State = raftv1.BranchState_BRANCH_STATE_COMMITTED
			}
			return forget(mtDecide("d1", mtCommit, vs...))
		}, want: mtCommit, closed: true},
		{name: "committed already: closed", setup: func(c *mtCoord) { c.begin(mtXfer("d1", "a", "b", 1)); c.commit("d1") },
			cmd: closeCommit, want: mtCommit, closed: true},
		{name: "aborted already: left open and aborted", setup: func(c *mtCoord) {
			c.begin(mtXfer("d1", "a", "b", 1))
			c.decide(mtAbortCmd("d1", mtInsufficient, "", 0))
		}, cmd: closeCommit, want: mtAbort},
		{name: "forgotten already: unchanged", setup: func(c *mtCoord) {
			c.begin(mtXfer("d1", "a", "b", 1))
			c.commit("d1")
			c.decide(mtForget("d1"))
		}, cmd: closeCommit, want: mtCommit, closed: true},
		{name: "a vote missing", setup: func(c *mtCoord) { c.begin(mtXfer("d1", "a", "b", 1)) },
			cmd: func(c *mtCoord) *raftv1.Command {
				return forget(mtDecide("d1", mtCommit, mtYes(c.txn("d1"))[1:]...))
			}, refused: "branch 0"},
		{name: "with an abort", setup: func(c *mtCoord) { c.begin(mtXfer("d1", "a", "b", 1)) },
			cmd:     func(c *mtCoord) *raftv1.Command { return forget(mtAbortCmd("d1", mtInsufficient, "", 0)) },
			refused: "only with the COMMIT"},
		{name: "with a hold", setup: func(c *mtCoord) { c.begin(mtPendingXfer("d1", 5, 0)) },
			cmd:     func(c *mtCoord) *raftv1.Command { return forget(mtDecide("d1", mtHold, mtYes(c.txn("d1"))...)) },
			refused: "only with the COMMIT"},
		{name: "commit of a pending txn", setup: func(c *mtCoord) { c.begin(mtPendingXfer("d1", 5, 0)) },
			cmd: closeCommit, refused: "pending"},
		{name: "posted pending txn (closed by its driver, not by a forget)", setup: func(c *mtCoord) {
			c.hold(mtPendingXfer("d1", 5, 0))
			c.resolve(mtPost("dp", "d1", 0))
		}, cmd: closeCommit, refused: "pending"},
		{name: "creating the record", setup: func(c *mtCoord) {},
			cmd: func(c *mtCoord) *raftv1.Command {
				cmd := forget(mtDecide("d1", mtCommit, &raftv1.Vote{TxnId: "d1", Index: 0, State: mtPrepared},
					&raftv1.Vote{TxnId: "d1", Index: 1, State: mtPrepared}))
				cmd.GetDecideTxn().Transfers = []*ledgerv1.Transfer{mtXfer("d1", "a", "b", 1)}
				return cmd
			}, refused: "only with the COMMIT"},
		{name: "unknown", setup: func(c *mtCoord) {},
			cmd: func(c *mtCoord) *raftv1.Command {
				return forget(mtDecide("d1", mtCommit, &raftv1.Vote{TxnId: "d1", Index: 0, State: mtPrepared}))
			}, refused: "unknown txn"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newMTCoordWithOther(t)
			tc.setup(c)
			if tc.refused != "" {
				c.mustRefuse(tc.cmd(c), tc.refused)
				return
			}
			before := c.txn("d1")
			wasOpen := slices.Contains(c.openIDs(), "d1")
			n := c.openCount()
			got := c.decide(tc.cmd(c))
			if got.Decision != tc.want || got.Forgotten != tc.closed || !proto.Equal(got, c.txn("d1")) {
				t.Fatalf("got %v (stored %v), want %v closed=%v", got, c.txn("d1"), tc.want, tc.closed)
			}
			if before.Decision != mtNone && !tc.closed || before.Forgotten {
				if !proto.Equal(got, before) {
					t.Errorf("a decided record changed beyond its closing: %v -> %v", before, got)
				}
			}
			wantOpen, wantCount := []string{"d1", "other"}, n // in key order
			if tc.closed {
				wantOpen = []string{"other"}
				if wasOpen {
					wantCount--
				}
			}
			if ids := c.openIDs(); !slices.Equal(ids, wantOpen) || c.openCount() != wantCount {
				t.Errorf("open %v (count %d), want %v (%d)", ids, c.openCount(), wantOpen, wantCount)
			}
			// Idempotent: the same command again changes nothing.
			again := c.decide(tc.cmd(c))
			if !proto.Equal(again, got) || c.openCount() != wantCount {
				t.Errorf("again: %v (open count %d)", again, c.openCount())
			}
			// A closed record never reopens.
			if tc.closed {
				c.advance(time.Hour)
				c.apply(mtAbortCmd("d1", mtInsufficient, "late", -1))
				if !proto.Equal(c.txn("d1"), got) {
					t.Errorf("closed record changed: %v", c.txn("d1"))
				}
			}
		})
	}
}

// --- Forget ---

func TestForget(t *testing.T) {
	type tc struct {
		name    string
		setup   func(c *mtCoord) // leaves txn "f1"
		refused string
	}
	cases := []tc{
		{name: "committed", setup: func(c *mtCoord) { c.begin(mtXfer("f1", "a", "b", 1)); c.commit("f1") }},
		{name: "aborted", setup: func(c *mtCoord) {
			c.begin(mtXfer("f1", "a", "b", 1))
			c.decide(mtAbortCmd("f1", mtInsufficient, "", 0))
		}},
		{name: "posted", setup: func(c *mtCoord) { c.hold(mtPendingXfer("f1", 5, 0)); c.resolve(mtPost("fp", "f1", 0)) }},
		{name: "voided", setup: func(c *mtCoord) { c.hold(mtPendingXfer("f1", 5, 0)); c.resolve(mtVoid("fv", "f1")) }},
		{name: "expired", setup: func(c *mtCoord) {
			c.hold(mtPendingXfer("f1", 5, 1))
			c.advance(time.Second)
			c.apply(mtExpire("f1"))
		}},
		{name: "failed try", setup: func(c *mtCoord) {
			c.begin(mtPendingXfer("f1", 5, 1))
			c.decide(mtAbortCmd("f1", mtInsufficient, "", 0))
		}},
		{name: "undecided", setup: func(c *mtCoord) { c.begin(mtXfer("f1", "a", "b", 1)) }, refused: "not decided"},
		{name: "held", setup: func(c *mtCoord) { c.hold(mtPendingXfer("f1", 5, 0)) }, refused: "not decided"},
		{name: "held past its expiry (not yet expired)", setup: func(c *mtCoord) {
			c.hold(mtPendingXfer("f1", 5, 1))
			c.advance(time.Hour)
		}, refused: "not decided"},
		{name: "unknown", setup: func(c *mtCoord) {}, refused: "unknown txn"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newMTCoordWithOther(t)
			tc.setup(c)
			if tc.refused != "" {
				open := c.openIDs()
				c.mustRefuse(mtForget("f1"), tc.refused)
				if got := c.openIDs(); !slices.Equal(got, open) {
					t.Errorf("open %v -> %v", open, got)
				}
				return
			}
			before := c.txn("f1")
			n := c.openCount()
			got := c.decide(mtForget("f1"))
			want := proto.Clone(before).(*raftv1.TxnRecord)
			want.Forgotten = true
			if !proto.Equal(got, want) || !proto.Equal(c.txn("f1"), want) {
				t.Fatalf("forgotten: %v, want %v", got, want)
			}
			if ids := c.openIDs(); !slices.Equal(ids, []string{"other"}) {
				t.Errorf("open after forget: %v", ids)
			}
			if c.openCount() != n-1 {
				t.Errorf("open count %d -> %d", n, c.openCount())
			}
			// Idempotent: the same record again, nothing else moves.
			again := c.decide(mtForget("f1"))
			if !proto.Equal(again, want) || c.openCount() != n-1 {
				t.Errorf("second forget: %v (open count %d)", again, c.openCount())
			}
			if ids := c.openIDs(); !slices.Equal(ids, []string{"other"}) {
				t.Errorf("open after second forget: %v", ids)
			}
			// A forgotten txn never reopens: a late decision, a retried begin, an expiry.
			c.advance(time.Hour)
			c.apply(mtAbortCmd("f1", mtInsufficient, "late", -1))
			c.apply(mtExpire("f1"))
			r := c.apply(mtBegin(mtClientView(want.Transfers)...))
			if !r.GetExisted() || !proto.Equal(r.GetTxn(), want) {
				t.Errorf("retried begin of a forgotten txn: %v", r)
			}
			if got := c.txn("f1"); !proto.Equal(got, want) {
				t.Errorf("forgotten record changed: %v", got)
			}
			if ids := c.openIDs(); !slices.Equal(ids, []string{"other"}) {
				t.Errorf("open at the end: %v", ids)
			}
		})
	}
}

// --- ResolvePending ---

// mtHeldCoord holds pending "p1" (alice -> bob, 100 USD, timeout 60 s).
func mtHeldCoord(t *testing.T) *mtCoord {
	c := newMTCoord(t)
	c.hold(mtPendingXfer("p1", 100, 60))
	return c
}

func TestResolvePending(t *testing.T) {
	type tc struct {
		name   string
		setup  func(c *mtCoord)
		tr     *ledgerv1.Transfer
		want   ledgerv1.TransferStatus
		msg    string                 // fragment of the result message
		after  raftv1.TxnDecision     // p1's decision after
		state  ledgerv1.TransferState // p1's pending state after
		amount uint64                 // p1's commit amount after
	}
	post := func(id string, amount uint64) func(c *mtCoord) {
		return func(c *mtCoord) {
			if r, _ := c.resolve(mtPost(id, "p1", amount)); r.Status != mtCreated {
				c.t.Fatalf("setup post: %v", r)
			}
		}
	}
	void := func(id string) func(c *mtCoord) {
		return func(c *mtCoord) {
			if r, _ := c.resolve(mtVoid(id, "p1")); r.Status != mtCreated {
				c.t.Fatalf("setup void: %v", r)
			}
		}
	}
	withCur := func(t *ledgerv1.Transfer, cur string) *ledgerv1.Transfer { t.Currency = cur; return t }
	withAcc := func(t *ledgerv1.Transfer, dr, cr string) *ledgerv1.Transfer {
		t.DebitAccountId, t.CreditAccountId = dr, cr
		return t
	}
	cases := []tc{
		{name: "post full (amount 0)", tr: mtPost("q1", "p1", 0), want: mtCreated,
			after: mtCommit, state: mtStatePosted, amount: 100},
		{name: "post full (amount given)", tr: mtPost("q1", "p1", 100), want: mtCreated,
			after: mtCommit, state: mtStatePosted, amount: 100},
		{name: "post partial", tr: mtPost("q1", "p1", 40), want: mtCreated,
			after: mtCommit, state: mtStatePosted, amount: 40},
		{name: "post naming accounts and currency", tr: withCur(withAcc(mtPost("q1", "p1", 1), "alice", "bob"), "USD"),
			want: mtCreated, after: mtCommit, state: mtStatePosted, amount: 1},
		{name: "post naming only the debit account", tr: withAcc(mtPost("q1", "p1", 0), "alice", ""),
			want: mtCreated, after: mtCommit, state: mtStatePosted, amount: 100},
		{name: "void", tr: mtVoid("q1", "p1"), want: mtCreated, after: mtAbort, state: mtStateVoided},
		{name: "void naming everything", tr: withCur(withAcc(mtVoid("q1", "p1"), "alice", "bob"), "USD"),
			want: mtCreated, after: mtAbort, state: mtStateVoided},
		{name: "post retried", setup: post("q1", 40), tr: mtPost("q1", "p1", 40), want: mtExists,
			after: mtCommit, state: mtStatePosted, amount: 40},
		{name: "void retried", setup: void("q1"), tr: mtVoid("q1", "p1"), want: mtExists,
			after: mtAbort, state: mtStateVoided},
		{name: "post retried with another amount", setup: post("q1", 40), tr: mtPost("q1", "p1", 41), want: mtIDReused,
			after: mtCommit, state: mtStatePosted, amount: 40},
		{name: "post id reused as a void", setup: post("q1", 0), tr: mtVoid("q1", "p1"), want: mtIDReused,
			after: mtCommit, state: mtStatePosted, amount: 100},
		{name: "post id is the pending id", tr: mtPost("p1", "p1", 0), want: mtIDReused, after: mtHold, state: mtStatePending},
		{name: "post id is another txn's transfer", setup: func(c *mtCoord) {
			c.begin(mtXfer("x1", "a", "b", 1), mtXfer("x2", "a", "b", 1))
		}, tr: mtPost("x2", "p1", 0), want: mtIDReused, after: mtHold, state: mtStatePending},
		{name: "pending unknown", tr: mtPost("q1", "nope", 0), want: mtPendingNF, msg: "not found", after: mtHold, state: mtStatePending},
		{name: "void of unknown", tr: mtVoid("q1", "nope"), want: mtPendingNF, msg: "not found", after: mtHold, state: mtStatePending},
		{name: "pending is a plain txn", setup: func(c *mtCoord) { c.begin(mtXfer("x1", "a", "b", 1)); c.commit("x1") },
			tr: mtPost("q1", "x1", 0), want: mtPendingNF, msg: "not found", after: mtHold, state: mtStatePending},
		{name: "pending is the second transfer of a chain", setup: func(c *mtCoord) {
			c.begin(mtXfer("x1", "a", "b", 1), mtXfer("x2", "a", "b", 1))
		}, tr: mtPost("q1", "x2", 0), want: mtPendingNF, msg: "not found", after: mtHold, state: mtStatePending},
		{name: "pending still being prepared", setup: func(c *mtCoord) { c.begin(mtPendingXfer("p2", 5, 0)) },
			tr: mtPost("q1", "p2", 0), want: mtPendingNF, msg: "prepared", after: mtHold, state: mtStatePending},
		{name: "pending whose try failed", setup: func(c *mtCoord) {
			c.begin(mtPendingXfer("p2", 5, 0))
			c.decide(mtAbortCmd("p2", mtInsufficient, "", 0))
		}, tr: mtVoid("q1", "p2"), want: mtPendingNF, msg: "failed", after: mtHold, state: mtStatePending},
		{name: "post naming another debit account", tr: withAcc(mtPost("q1", "p1", 0), "carol", ""),
			want: mtPendingNF, after: mtHold, state: mtStatePending},
		{name: "void naming another credit account", tr: withAcc(mtVoid("q1", "p1"), "alice", "carol"),
			want: mtPendingNF, after: mtHold, state: mtStatePending},
		{name: "posted, posted again", setup: post("q0", 30), tr: mtPost("q1", "p1", 0), want: mtAlreadyPosted,
			after: mtCommit, state: mtStatePosted, amount: 30},
		{name: "posted, then voided", setup: post("q0", 0), tr: mtVoid("q1", "p1"), want: mtAlreadyPosted,
			after: mtCommit, state: mtStatePosted, amount: 100},
		{name: "voided, then posted", setup: void("q0"), tr: mtPost("q1", "p1", 0), want: mtAlreadyVoided,
			after: mtAbort, state: mtStateVoided},
		{name: "voided, voided again", setup: void("q0"), tr: mtVoid("q1", "p1"), want: mtAlreadyVoided,
			after: mtAbort, state: mtStateVoided},
		{name: "post after the timeout (lazy expiry)", setup: func(c *mtCoord) { c.advance(60 * time.Second) },
			tr: mtPost("q1", "p1", 0), want: mtExpired, after: mtAbort, state: mtStateExpired},
		{name: "void after the timeout (lazy expiry)", setup: func(c *mtCoord) { c.advance(90 * time.Second) },
			tr: mtVoid("q1", "p1"), want: mtExpired, after: mtAbort, state: mtStateExpired},
		{name: "post just before the timeout", setup: func(c *mtCoord) {
			c.now = c.txn("p1").ExpiresAtUnixNano - 2*int64(time.Millisecond) // apply adds 1 ms
		}, tr: mtPost("q1", "p1", 0), want: mtCreated, after: mtCommit, state: mtStatePosted, amount: 100},
		{name: "post after ExpireTxns", setup: func(c *mtCoord) {
			c.advance(61 * time.Second)
			c.apply(mtExpire("p1"))
		}, tr: mtPost("q1", "p1", 0), want: mtExpired, after: mtAbort, state: mtStateExpired},
		{name: "post above the pending amount", tr: mtPost("q1", "p1", 101), want: mtInvalidAmount, msg: "exceeds",
			after: mtHold, state: mtStatePending},
		{name: "void with any amount", tr: func() *ledgerv1.Transfer { v := mtVoid("q1", "p1"); v.Amount = 1000; return v }(),
			want: mtCreated, after: mtAbort, state: mtStateVoided},
		{name: "post in another currency", tr: withCur(mtPost("q1", "p1", 0), "EUR"), want: mtCurrency, msg: "USD",
			after: mtHold, state: mtStatePending},
		{name: "void in another currency", tr: withCur(mtVoid("q1", "p1"), "EUR"), want: mtCurrency,
			after: mtHold, state: mtStatePending},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := mtHeldCoord(t)
			if tc.setup != nil {
				tc.setup(c)
			}
			before := c.txn("p1")
			r, res := c.resolve(tc.tr)
			if r.Status != tc.want {
				t.Fatalf("status %v (%s), want %v", r.Status, r.Message, tc.want)
			}
			if tc.msg != "" && !strings.Contains(r.Message, tc.msg) {
				t.Errorf("message %q does not mention %q", r.Message, tc.msg)
			}
			rec := c.txn("p1")
			if rec.Decision != tc.after || rec.PendingState != tc.state || rec.CommitAmount != tc.amount {
				t.Fatalf("p1 after: %v, want %v/%v/%d", rec, tc.after, tc.state, tc.amount)
			}
			if rec.Forgotten {
				t.Errorf("resolution forgot the txn")
			}
			if !slices.Contains(c.openIDs(), "p1") {
				t.Errorf("p1 left the open set before the driver forgot it")
			}
			changed := !proto.Equal(rec, before)
			if changed {
				if rec.DecidedAtUnixNano != c.now {
					t.Errorf("decided at %d, want %d", rec.DecidedAtUnixNano, c.now)
				}
				if tc.want == mtCreated && rec.ResolvedBy != tc.tr.Id {
					t.Errorf("resolved by %q", rec.ResolvedBy)
				}
			}
			if tc.want == mtCreated && !proto.Equal(res.GetTxn(), rec) {
				t.Errorf("result record %v, stored %v", res.GetTxn(), rec)
			}
			// Read side: a successful post or void is found with the effective amount and
			// currency; a failed one is not found.
			found, _ := c.read(tc.tr.Id)
			got := found[tc.tr.Id]
			switch tc.want {
			case mtCreated:
				wantAmount := rec.CommitAmount
				if rec.Decision == mtAbort {
					wantAmount = 100
				}
				if got == nil || got.Amount != wantAmount || got.Currency != "USD" || got.CreatedAt == nil ||
					got.PostPendingId != tc.tr.PostPendingId || got.VoidPendingId != tc.tr.VoidPendingId {
					t.Errorf("read %s: %v", tc.tr.Id, got)
				}
			case mtExists, mtIDReused:
			default:
				if got != nil {
					t.Errorf("a failed post/void is found: %v", got)
				}
			}
			// Every outcome stored stays: a retry with the same fields answers the same.
			if tc.want != mtIDReused {
				want := tc.want
				if want == mtCreated {
					want = mtExists
				}
				c.advance(time.Hour)
				if r2, _ := c.resolve(proto.Clone(tc.tr).(*ledgerv1.Transfer)); r2.Status != want ||
					(want != mtExists && r2.Message != r.Message) {
					t.Errorf("retry: %v, want %v %q", r2, want, r.Message)
				}
			}
		})
	}
}

// TestResolveFailedOutcomeIsFinal: a post or void that failed keeps its outcome even
// when the pending transfer later appears, is held, or could be posted.
func TestResolveFailedOutcomeIsFinal(t *testing.T) {
	c := newMTCoord(t)
	// Before the pending transfer exists.
	early, _ := c.resolve(mtPost("early", "p1", 0))
	if early.Status != mtPendingNF {
		t.Fatalf("early post: %v", early)
	}
	c.begin(mtPendingXfer("p1", 100, 60))
	// While it is being prepared.
	preparing, _ := c.resolve(mtPost("preparing", "p1", 0))
	if preparing.Status != mtPendingNF {
		t.Fatalf("post while preparing: %v", preparing)
	}
	c.decide(mtDecide("p1", mtHold, mtYes(c.txn("p1"))...))
	tooMuch, _ := c.resolve(mtPost("toomuch", "p1", 101))
	if tooMuch.Status != mtInvalidAmount {
		t.Fatalf("post above: %v", tooMuch)
	}
	cur, _ := c.resolve(withCurrency(mtVoid("cur", "p1"), "EUR"))
	if cur.Status != mtCurrency {
		t.Fatalf("void in EUR: %v", cur)
	}
	// Now p1 is held and postable: every failed id keeps its first answer.
	retries := []struct {
		tr   *ledgerv1.Transfer
		orig *ledgerv1.TransferResult
	}{
		{mtPost("early", "p1", 0), early},
		{mtPost("preparing", "p1", 0), preparing},
		{mtPost("toomuch", "p1", 101), tooMuch},
		{withCurrency(mtVoid("cur", "p1"), "EUR"), cur},
	}
	check := func(when string) {
		t.Helper()
		for _, rt := range retries {
			r, _ := c.resolve(rt.tr)
			if r.Status != rt.orig.Status || r.Message != rt.orig.Message {
				t.Errorf("%s: retry of %s: %v, want %v", when, rt.tr.Id, r, rt.orig)
			}
			// The failed id is taken: a begin with it is ID_REUSED.
			br := c.apply(mtBegin(mtXfer(rt.tr.Id, "a", "b", 1)))
			if br.GetTxn() != nil || len(br.GetTransfers()) != 1 || br.Transfers[0].Status != mtIDReused {
				t.Errorf("%s: begin %s: %v", when, rt.tr.Id, br)
			}
			if found, _ := c.read(rt.tr.Id); found[rt.tr.Id] != nil {
				t.Errorf("%s: failed %s is found", when, rt.tr.Id)
			}
		}
	}
	check("held")
	if rec := c.txn("p1"); rec.Decision != mtHold {
		t.Fatalf("failed posts moved p1: %v", rec)
	}
	ok, _ := c.resolve(mtPost("ok", "p1", 50))
	if ok.Status != mtCreated {
		t.Fatalf("post: %v", ok)
	}
	check("posted")
	c.advance(time.Hour)
	c.apply(mtExpire("p1"))
	c.decide(mtForget("p1"))
	check("forgotten")
	if r, _ := c.resolve(mtPost("ok", "p1", 50)); r.Status != mtExists {
		t.Errorf("retry of the post after forget: %v", r)
	}
}

func withCurrency(t *ledgerv1.Transfer, cur string) *ledgerv1.Transfer { t.Currency = cur; return t }

func TestResolvePendingMalformed(t *testing.T) {
	cases := []struct {
		name string
		tr   *ledgerv1.Transfer
		msg  string
	}{
		{"neither post nor void", mtXfer("q1", "alice", "bob", 1), "neither"},
		{"both post and void", &ledgerv1.Transfer{Id: "q1", PostPendingId: "p1", VoidPendingId: "p1"}, "mutually exclusive"},
		{"pending post", &ledgerv1.Transfer{Id: "q1", PostPendingId: "p1", Pending: true}, "pending"},
		{"post with a timeout", &ledgerv1.Transfer{Id: "q1", PostPendingId: "p1", TimeoutSeconds: 5}, "timeout"},
		{"bad id", mtPost("q 1", "p1", 0), "id"},
		{"bad pending id", mtPost("q1", "p 1", 0), "post_pending_id"},
		{"bad currency", withCurrency(mtPost("q1", "p1", 0), "usd"), "currency"},
		{"created_at set", func() *ledgerv1.Transfer { p := mtPost("q1", "p1", 0); p.CreatedAt = timestamppb.Now(); return p }(), "created_at"},
		{"no transfer", nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := mtHeldCoord(t)
			cmd := mtResolve(tc.tr)
			if tc.tr == nil {
				cmd = &raftv1.Command{Op: &raftv1.Command_ResolvePending{ResolvePending: &raftv1.ResolvePending{}}}
			}
			c.mustRefuse(cmd, tc.msg)
			if rec := c.txn("p1"); rec.Decision != mtHold {
				t.Errorf("p1 moved: %v", rec)
			}
			// Nothing was stored: the id is still free.
			if r, _ := c.resolve(mtPost("q1", "p1", 0)); r.Status != mtCreated {
				t.Errorf("post after the refusal: %v", r)
			}
		})
	}
}

// --- expiry and the logged clock ---

func TestExpireTxns(t *testing.T) {
	c := newMTCoord(t)
	c.hold(mtPendingXfer("e1", 10, 5))  // expires 5 s after its begin
	c.hold(mtPendingXfer("e2", 10, 0))  // never
	c.begin(mtPendingXfer("e3", 10, 1)) // still preparing: not the expirer's business
	c.begin(mtXfer("e4", "a", "b", 1))
	c.commit("e4")
	e1 := c.txn("e1")
	all := []string{"e1", "e2", "e3", "e4", "unknown"}

	// One nanosecond early: nothing.
	r := c.applyAt(e1.ExpiresAtUnixNano-1, mtExpire(all...))
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
		t.Fatalf("expire: %v", r)
	}
	var ids []string
	for _, tr := range r.Transfers {
		ids = append(ids, tr.Id)
	}
	if !slices.Equal(ids, []string{"e1", "e2", "e3", "e4"}) {
		t.Errorf("expire answered %v (unknown ids are skipped)", ids)
	}
	if got := c.txn("e1"); !proto.Equal(got, e1) {
		t.Fatalf("expired early: %v", got)
	}
	// At the instant of expiry.
	c.now = e1.ExpiresAtUnixNano
	c.applyAt(c.now, mtExpire(all...))
	got := c.txn("e1")
	if got.Decision != mtAbort || got.PendingState != mtStateExpired || got.DecidedAtUnixNano != c.now || got.Forgotten {
		t.Fatalf("e1 after expiry: %v", got)
	}
	if rec := c.txn("e2"); rec.Decision != mtHold {
		t.Errorf("e2 without timeout expired: %v", rec)
	}
	if rec := c.txn("e3"); rec.Decision != mtNone {
		t.Errorf("e3 still preparing was expired: %v", rec)
	}
	if rec := c.txn("e4"); rec.Decision != mtCommit {
		t.Errorf("e4 changed: %v", rec)
	}
	// Expiring again changes nothing.
	c.advance(time.Hour)
	c.apply(mtExpire("e1", "e1"))
	if rec := c.txn("e1"); !proto.Equal(rec, got) {
		t.Errorf("second expiry: %v", rec)
	}
	// A late hold on e3, long past its timeout, is held and expires at the next look.
	c.decide(mtDecide("e3", mtHold, mtYes(c.txn("e3"))...))
	c.apply(mtExpire("e3"))
	if rec := c.txn("e3"); rec.Decision != mtAbort || rec.PendingState != mtStateExpired {
		t.Errorf("late-held e3: %v", rec)
	}
	// An expired txn is decided: it can be forgotten.
	c.decide(mtForget("e1"))
	if ids := c.openIDs(); !slices.Equal(ids, []string{"e2", "e3", "e4"}) {
		t.Errorf("open %v", ids)
	}
}

// TestExpireMonotonicClock: the clock only moves forward through logged entries; a
// refused command does not move it.
func TestExpireMonotonicClock(t *testing.T) {
	c := newMTCoord(t)
	p := c.hold(mtPendingXfer("e1", 10, 5))
	// A command from a later proposer clock, then one from an earlier one: the earlier one
	// runs at the later time, so e1 expires.
	c.applyAt(p.ExpiresAtUnixNano, mtExpire())
	if got := c.clock(); got != p.ExpiresAtUnixNano {
		t.Fatalf("clock %d", got)
	}
	c.applyAt(p.BegunAtUnixNano, mtExpire("e1"))
	if got := c.clock(); got != p.ExpiresAtUnixNano {
		t.Fatalf("clock went back to %d", got)
	}
	if rec := c.txn("e1"); rec.Decision != mtAbort || rec.PendingState != mtStateExpired || rec.DecidedAtUnixNano != p.ExpiresAtUnixNano {
		t.Fatalf("e1: %v", rec)
	}

	// A refused command far in the future leaves the clock alone.
	c2 := newMTCoord(t)
	q := c2.hold(mtPendingXfer("e2", 10, 5))
	clock := c2.clock()
	for _, cmd := range []*raftv1.Command{mtDecide("nope", mtCommit), mtForget("e2"), mtBegin(), mtResolve(mtXfer("z", "a", "b", 1))} {
		if r := c2.applyAt(q.ExpiresAtUnixNano+int64(time.Hour), cmd); r.GetRefusal() != mtMalformed {
			t.Fatalf("%v: %v", cmd, r)
		}
		if got := c2.clock(); got != clock {
			t.Fatalf("refused %v moved the clock to %d", cmd, got)
		}
	}
	c2.applyAt(q.BegunAtUnixNano+int64(time.Second), mtExpire("e2"))
	if rec := c2.txn("e2"); rec.Decision != mtHold {
		t.Fatalf("e2 expired by a refused command's clock: %v", rec)
	}
	// A post at an earlier proposer clock than the last entry uses the later one.
	c2.applyAt(q.ExpiresAtUnixNano, mtExpire())
	r := c2.applyAt(q.BegunAtUnixNano, mtResolve(mtPost("q2", "e2", 0)))
	if r.Transfers[0].Status != mtExpired {
		t.Fatalf("post with a stale proposer clock: %v", r)
	}
}

// --- Outcome ---

func TestOutcome(t *testing.T) {
	abortAt := func(i int32) func(c *mtCoord, id string) {
		return func(c *mtCoord, id string) { c.decide(mtAbortCmd(id, mtInsufficient, "short", i)) }
	}
	commit := func(c *mtCoord, id string) { c.commit(id) }
	hold := func(c *mtCoord, id string) { c.decide(mtDecide(id, mtHold, mtYes(c.txn(id))...)) }
	type tc struct {
		name     string
		ts       []*ledgerv1.Transfer
		decide   func(c *mtCoord, id string)
		want     []ledgerv1.TransferStatus // nil: undecided
		existedW []ledgerv1.TransferStatus
		msgs     []string
	}
	three := []*ledgerv1.Transfer{mtXfer("o1", "a", "b", 1), mtXfer("o2", "a", "b", 2), mtXfer("o3", "a", "b", 3)}
	cases := []tc{
		{name: "undecided", ts: three[:1]},
		{name: "committed", ts: three[:1], decide: commit,
			want: []ledgerv1.TransferStatus{mtCreated}, existedW: []ledgerv1.TransferStatus{mtExists}},
		{name: "committed chain", ts: three, decide: commit,
			want:     []ledgerv1.TransferStatus{mtCreated, mtCreated, mtCreated},
			existedW: []ledgerv1.TransferStatus{mtExists, mtExists, mtExists}},
		{name: "aborted single", ts: three[:1], decide: abortAt(0),
			want: []ledgerv1.TransferStatus{mtInsufficient}, msgs: []string{"short"}},
		{name: "aborted chain at 1", ts: three, decide: abortAt(1),
			want: []ledgerv1.TransferStatus{mtLinkedFailed, mtInsufficient, mtLinkedFailed},
			msgs: []string{`"o2"`, "short", `"o2"`}},
		{name: "aborted chain at 0", ts: three, decide: abortAt(0),
			want: []ledgerv1.TransferStatus{mtInsufficient, mtLinkedFailed, mtLinkedFailed},
			msgs: []string{"short", `"o1"`, `"o1"`}},
		{name: "aborted chain, no transfer named", ts: three, decide: abortAt(-1),
			want: []ledgerv1.TransferStatus{mtInsufficient, mtInsufficient, mtInsufficient},
			msgs: []string{"short", "short", "short"}},
		{name: "held", ts: []*ledgerv1.Transfer{mtPendingXfer("o1", 5, 60)}, decide: hold,
			want: []ledgerv1.TransferStatus{mtCreated}, existedW: []ledgerv1.TransferStatus{mtExists}},
		{name: "try failed", ts: []*ledgerv1.Transfer{mtPendingXfer("o1", 5, 60)}, decide: abortAt(0),
			want: []ledgerv1.TransferStatus{mtInsufficient}},
		{name: "posted", ts: []*ledgerv1.Transfer{mtPendingXfer("o1", 5, 60)},
			decide: func(c *mtCoord, id string) { hold(c, id); c.resolve(mtPost("post", id, 1)) },
			want:   []ledgerv1.TransferStatus{mtCreated}, existedW: []ledgerv1.TransferStatus{mtExists}},
		{name: "voided", ts: []*ledgerv1.Transfer{mtPendingXfer("o1", 5, 60)},
			decide: func(c *mtCoord, id string) { hold(c, id); c.resolve(mtVoid("void", id)) },
			want:   []ledgerv1.TransferStatus{mtCreated}, existedW: []ledgerv1.TransferStatus{mtExists}},
		{name: "expired", ts: []*ledgerv1.Transfer{mtPendingXfer("o1", 5, 1)},
			decide: func(c *mtCoord, id string) { hold(c, id); c.advance(time.Second); c.apply(mtExpire(id)) },
			want:   []ledgerv1.TransferStatus{mtCreated}, existedW: []ledgerv1.TransferStatus{mtExists}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newMTCoord(t)
			c.begin(tc.ts...)
			if tc.decide != nil {
				tc.decide(c, tc.ts[0].Id)
			}
			rec := c.txn(tc.ts[0].Id)
			out := coordinator.Outcome(rec, false)
			if tc.want == nil {
				if out != nil {
					t.Fatalf("undecided outcome %v", out)
				}
				return
			}
			if !slices.Equal(mtStatuses(out), tc.want) {
				t.Fatalf("outcome %v, want %v", out, tc.want)
			}
			for i, r := range out {
				if r.Id != tc.ts[i].Id {
					t.Errorf("result %d id %q", i, r.Id)
				}
				if tc.msgs != nil && !strings.Contains(r.Message, tc.msgs[i]) {
					t.Errorf("result %d message %q does not mention %s", i, r.Message, tc.msgs[i])
				}
			}
			want := tc.existedW
			if want == nil {
				want = tc.want // failures answer the same on a retry
			}
			if got := mtStatuses(coordinator.Outcome(rec, true)); !slices.Equal(got, want) {
				t.Errorf("retry outcome %v, want %v", got, want)
			}
			// A retried begin returns the record the outcome is computed from.
			r := c.apply(mtBegin(mtChain(tc.ts...)...))
			if !r.GetExisted() || !slices.Equal(mtStatuses(coordinator.Outcome(r.Txn, true)), want) {
				t.Errorf("retried begin: %v", r)
			}
		})
	}
}

// --- reads ---

func TestReadTransfers(t *testing.T) {
	c := newMTCoord(t)
	c.begin(mtXfer("undecided", "a", "b", 1))
	c.begin(mtXfer("c1", "a", "b", 1), mtXfer("c2", "c", "d", 2))
	c.commit("c1")
	c.begin(mtXfer("a1", "a", "b", 1), mtXfer("a2", "c", "d", 2))
	c.decide(mtAbortCmd("a1", mtInsufficient, "", 1))
	c.hold(mtPendingXfer("held", 10, 0))
	c.hold(mtPendingXfer("posted", 10, 0))
	c.resolve(mtPost("post", "posted", 4))
	c.hold(mtPendingXfer("voided", 10, 0))
	c.resolve(mtVoid("void", "voided"))
	c.hold(mtPendingXfer("expired", 10, 1))
	c.begin(mtPendingXfer("tryfailed", 10, 0))
	c.decide(mtAbortCmd("tryfailed", mtInsufficient, "", 0))
	c.begin(mtPendingXfer("preparing", 10, 0))
	c.advance(time.Second)
	c.apply(mtExpire("expired"))
	c.resolve(mtPost("badpost", "held", 11))
	c.resolve(mtVoid("badvoid", "nope"))
	c.commit("c1") // no-op
	c.decide(mtForget("c1"))

	ids := []string{"undecided", "c1", "c2", "a1", "a2", "held", "posted", "post", "voided", "void",
		"expired", "tryfailed", "preparing", "badpost", "badvoid", "unknown"}
	found, nf := c.read(ids...)
	wantNF := []string{"undecided", "a1", "a2", "tryfailed", "preparing", "badpost", "badvoid", "unknown"}
	if !slices.Equal(nf, wantNF) {
		t.Errorf("not found %v, want %v", nf, wantNF)
	}
	// found keeps the order of the request.
	all, _, err := coordinator.ReadTransfers(c.store, ids)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, tr := range all {
		order = append(order, tr.Id)
	}
	if want := []string{"c1", "c2", "held", "posted", "post", "voided", "void", "expired"}; !slices.Equal(order, want) {
		t.Errorf("found %v, want %v", order, want)
	}
	states := map[string]ledgerv1.TransferState{
		"c1": mtStateNone, "c2": mtStateNone, "held": mtStatePending, "posted": mtStatePosted,
		"voided": mtStateVoided, "expired": mtStateExpired, "post": mtStateNone, "void": mtStateNone,
	}
	for id, st := range states {
		tr := found[id]
		if tr == nil {
			t.Errorf("%s not found", id)
			continue
		}
		if tr.State != st || tr.CreatedAt == nil {
			t.Errorf("%s: %v, want state %v", id, tr, st)
		}
	}
	if tr := found["c2"]; tr.DebitAccountId != "c" || tr.CreditAccountId != "d" || tr.Amount != 2 {
		t.Errorf("c2: %v", tr)
	}
	// The pending transfer shows its pending amount; the post shows what it posted, with
	// the currency taken from the pending transfer.
	if tr := found["posted"]; tr.Amount != 10 || !tr.Pending {
		t.Errorf("posted: %v", tr)
	}
	if tr := found["post"]; tr.Amount != 4 || tr.Currency != "USD" || tr.PostPendingId != "posted" {
		t.Errorf("post: %v", tr)
	}
	if tr := found["void"]; tr.Amount != 10 || tr.Currency != "USD" || tr.VoidPendingId != "voided" {
		t.Errorf("void: %v", tr)
	}
	// The read does not alias the stored record.
	found["c1"].Amount = 999
	if again, _ := c.read("c1"); again["c1"].Amount != 1 {
		t.Errorf("read aliases the store")
	}

	// ReadTxns leaves unknown ids out; ReadOpen lists every unforgotten txn.
	recs, err := coordinator.ReadTxns(c.store, []string{"held", "nope", "c1", "c2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].TxnId != "held" || recs[1].TxnId != "c1" || !recs[1].Forgotten {
		t.Errorf("read txns: %v", recs)
	}
	wantOpen := []string{"a1", "expired", "held", "posted", "preparing", "tryfailed", "undecided", "voided"}
	if got := c.openIDs(); !slices.Equal(got, wantOpen) {
		t.Errorf("open %v, want %v", got, wantOpen)
	}
	if n := c.openCount(); n != uint64(len(wantOpen)) {
		t.Errorf("open count %d, want %d", n, len(wantOpen))
	}
}

func TestReadDisplayTransfer(t *testing.T) {
	c := newMTCoord(t)
	c.hold(mtPendingXfer("p1", 10, 0))
	rec := c.txn("p1")
	d := coordinator.DisplayTransfer(rec, "p1")
	if d == nil || d.State != mtStatePending || d.Amount != 10 {
		t.Fatalf("display: %v", d)
	}
	d.Amount = 1
	if rec.Transfers[0].Amount != 10 {
		t.Errorf("DisplayTransfer aliases the record")
	}
	if rec.Transfers[0].State != mtStateNone {
		t.Errorf("DisplayTransfer wrote the state into the record")
	}
	if d := coordinator.DisplayTransfer(rec, "other"); d != nil {
		t.Errorf("display of an id not in the txn: %v", d)
	}
	for _, tc := range []struct {
		dec     raftv1.TxnDecision
		state   ledgerv1.TransferState
		visible bool
	}{
		{mtNone, mtStateNone, false},
		{mtAbort, mtStateNone, false},
		{mtHold, mtStatePending, true},
		{mtCommit, mtStatePosted, true},
		{mtAbort, mtStateVoided, true},
		{mtAbort, mtStateExpired, true},
	} {
		r := proto.Clone(rec).(*raftv1.TxnRecord)
		r.Decision, r.PendingState = tc.dec, tc.state
		d := coordinator.DisplayTransfer(r, "p1")
		if (d != nil) != tc.visible || (d != nil && d.State != tc.state) {
			t.Errorf("%v/%v: %v", tc.dec, tc.state, d)
		}
	}
}

// TestReadApplyBatch: a batch applies its commands in order in one overlay; a refusal
// in the middle touches nothing and the rest still apply.
func TestReadApplyBatch(t *testing.T) {
	store := ledger.NewMemStore()
	a, err := coordinator.NewApplier(store)
	if err != nil {
		t.Fatal(err)
	}
	b := &raftv1.Batch{Commands: []*raftv1.Command{
		mtBegin(mtXfer("b1", "a", "b", 1)),
		mtDecide("b1", mtCommit), // refused: no votes
		mtDecide("b1", mtCommit, mtYes(&raftv1.TxnRecord{TxnId: "b1", Transfers: make([]*ledgerv1.Transfer, 1)})...),
		mtForget("b1"),
	}}
	for i, cmd := range b.Commands {
		cmd.TimestampUnixNano = mtT0 + int64(i)
	}
	b.Commands[1].TimestampUnixNano = mtT0 + int64(time.Hour)
	res, err := a.ApplyBatch(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Results) != 4 || res.Results[1].Refusal != mtMalformed || !res.Results[3].GetTxn().GetForgotten() {
		t.Fatalf("batch: %v", res)
	}
	if a.State().LastTimestampUnixNano != mtT0+3 || a.State().OpenCount != 0 {
		t.Errorf("state %v", a.State())
	}
	store.Commit(a.Overlay())
	if rec, _ := coordinator.ReadTxn(store, "b1"); rec.Decision != mtCommit || !rec.Forgotten || rec.DecidedAtUnixNano != mtT0+2 {
		t.Errorf("b1: %v", rec)
	}
}

// TestRecordsStoredWithoutBranches: a record's branches are not stored (they are derived
// from its transfers on every read), reads give the branches Begin answered, and a
// record stored with its branches (the earlier format) reads as it was stored.
func TestRecordsStoredWithoutBranches(t *testing.T) {
	c := newMTCoord(t)
	begun := c.begin(mtXfer("x1", "a", "b", 5), mtXfer("x2", "b", "c", 7))
	if len(begun.Branches) != 4 {
		t.Fatalf("begin answered %d branches, want 4", len(begun.Branches))
	}
	raw, ok, err := c.store.Get([]byte("r" + begun.TxnId))
	if err != nil || !ok {
		t.Fatalf("raw record: %v %v", ok, err)
	}
	stored := &raftv1.TxnRecord{}
	if err := proto.Unmarshal(raw, stored); err != nil {
		t.Fatal(err)
	}
	if len(stored.Branches) != 0 || len(stored.Transfers) != 2 {
		t.Fatalf("stored record has %d branches and %d transfers, want 0 and 2", len(stored.Branches), len(stored.Transfers))
	}
	for _, rec := range []*raftv1.TxnRecord{c.txn(begun.TxnId), c.commit(begun.TxnId), c.txn(begun.TxnId)} {
		if len(rec.Branches) != len(begun.Branches) {
			t.Fatalf("read %d branches, want %d", len(rec.Branches), len(begun.Branches))
		}
		for i := range rec.Branches {
			if !proto.Equal(rec.Branches[i], begun.Branches[i]) {
				t.Fatalf("branch %d read as %v, begun as %v", i, rec.Branches[i], begun.Branches[i])
			}
		}
	}

	// The earlier format: branches stored with the record.
	old := proto.Clone(c.txn(begun.TxnId)).(*raftv1.TxnRecord)
	old.TxnId = "old-format"
	old.Branches[0].Amount = 99 // whatever was stored is what is read
	ov := ledger.NewOverlay(c.store)
	data, err := proto.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	ov.Set([]byte("r"+old.TxnId), data)
	c.store.Commit(ov)
	got := c.txn(old.TxnId)
	if !proto.Equal(got, old) {
		t.Fatalf("old-format record read as %v, stored %v", got, old)
	}
}

// mtWrites applies cmd like applyAt and returns the keys its overlay wrote, by prefix.
func (c *mtCoord) mtWrites(cmd *raftv1.Command) (map[byte]int, map[string]int) {
	c.t.Helper()
	c.now += int64(time.Millisecond)
	cmd.TimestampUnixNano = c.now
	a, err := coordinator.NewApplier(c.store)
	if err != nil {
		c.t.Fatalf("new applier: %v", err)
	}
	if r, err := a.Apply(cmd); err != nil || r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
		c.t.Fatalf("apply %v: %v %v", cmd, r, err)
	}
	ov := a.Overlay()
	byPrefix, bytes := map[byte]int{}, map[string]int{}
	_ = ov.Writes(func(k, v []byte) error {
		byPrefix[k[0]]++
		bytes[string(k[:1])] += len(v)
		return nil
	})
	c.store.Commit(ov)
	return byPrefix, bytes
}

// A record is written once, by its Begin; the decision and the forget write only its
// status (a few bytes), and every read sees the record with its latest status.
func TestRecordWrittenOnce(t *testing.T) {
	c := newMTCoord(t)
	x := mtXfer("once", "a", "b", 5)
	writes, _ := c.mtWrites(mtBegin(x))
	if writes['r'] != 1 || writes['d'] != 0 || writes['t'] != 0 || writes['l'] != 1 || len(writes) != 3 {
		t.Fatalf("begin wrote %v, want one record, its open list and the group state (no status; no index entry for a first transfer)", writes)
	}
	rec := c.txn("once")
	writes, size := c.mtWrites(mtDecide("once", mtCommit, mtYes(rec)...))
	if writes['r'] != 0 || writes['d'] != 1 {
		t.Fatalf("decide wrote %v, want the status only", writes)
	}
	if size["d"] > 32 {
		t.Fatalf("status of a commit is %d bytes, want a few", size["d"])
	}
	if got := c.txn("once"); got.Decision != mtCommit || got.Forgotten || len(got.Transfers) != 1 || got.FailedIndex != -1 {
		t.Fatalf("decided record read as %v", got)
	}
	writes, _ = c.mtWrites(mtForget("once"))
	if writes['r'] != 0 || writes['d'] != 1 || writes['l'] != 1 || len(writes) != 3 {
		t.Fatalf("forget wrote %v, want the status, its open list's deletion and the group state", writes)
	}
	got := c.txn("once")
	if got.Decision != mtCommit || !got.Forgotten || got.DecidedAtUnixNano == 0 || got.BegunAtUnixNano != rec.BegunAtUnixNano {
		t.Fatalf("forgotten record read as %v", got)
	}
	if want := mtClientView([]*ledgerv1.Transfer{x}); !proto.Equal(mtClientView(got.Transfers)[0], want[0]) {
		t.Fatalf("transfer read back as %v, want %v", got.Transfers[0], want[0])
	}
	// A retry reads the outcome from both parts.
	if r := c.apply(mtBegin(x)); !r.Existed || r.Txn.GetDecision() != mtCommit {
		t.Fatalf("retried begin answered %v", r)
	}
}

// A record of the earlier format (everything under its record key, no status) reads as
// stored, and a status written over it later wins.
func TestRecordWithoutStatusReadsAsStored(t *testing.T) {
	c := newMTCoord(t)
	old := c.begin(mtXfer("old", "a", "b", 5)) // open, undecided
	old.Branches = nil
	old.Decision, old.DecidedAtUnixNano = mtCommit, mtT0+1
	ov := ledger.NewOverlay(c.store)
	data, err := proto.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	ov.Set([]byte("rold"), data) // decided the earlier way: the whole record rewritten
	c.store.Commit(ov)
	got := c.txn("old")
	got.Branches = nil
	if !proto.Equal(got, old) {
		t.Fatalf("old-format record read as %v, stored %v", got, old)
	}
	c.apply(mtForget("old"))
	if got := c.txn("old"); !got.Forgotten || got.Decision != mtCommit || got.DecidedAtUnixNano != mtT0+1 {
		t.Fatalf("forgotten old-format record read as %v", got)
	}
}

// A Begin's router deadline is kept on the record (clamped), so the driver leaves the
// transaction to its router until then; a retried Begin does not move it.
func TestBeginKeepsRouterDeadline(t *testing.T) {
	for _, tc := range []struct {
		name     string
		deadline time.Duration // after the Begin's logged clock; 0: none given
		none     bool          // the deadline given is 0 or negative
		want     time.Duration // after the logged clock; -1: none kept
	}{
		{name: "none", none: true, want: -1},
		{name: "passed", deadline: -time.Second, want: -1},
		{name: "now", deadline: 0, want: -1},
		{name: "ahead", deadline: 20 * time.Second, want: 20 * time.Second},
		{name: "far ahead: clamped", deadline: time.Hour, want: coordinator.RouterDeadlineMax},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newMTCoord(t)
			cmd := mtBegin(mtXfer("t1", "a", "b", 5))
			at := c.now + int64(time.Millisecond)
			if !tc.none {
				cmd.GetBeginTxn().RouterDeadlineUnixNano = at + int64(tc.deadline)
			}
			r := c.applyAt(at, cmd)
			want := int64(0)
			if tc.want >= 0 {
				want = at + int64(tc.want)
			}
			if got := r.GetTxn().GetRouterDeadlineUnixNano(); got != want {
				t.Fatalf("router deadline %d, want %d (begun at %d)", got, want, at)
			}
			if got := c.txn("t1").GetRouterDeadlineUnixNano(); got != want {
				t.Fatalf("stored router deadline %d, want %d", got, want)
			}
			again := mtBegin(mtXfer("t1", "a", "b", 5))
			again.GetBeginTxn().RouterDeadlineUnixNano = at + int64(time.Minute)
			if r := c.applyAt(at+int64(time.Second), again); !r.GetExisted() || r.GetTxn().GetRouterDeadlineUnixNano() != want {
				t.Fatalf("retried begin: %v", r)
			}
			c.now = at + int64(time.Second)
			c.commit("t1")
			if got := c.txn("t1").GetRouterDeadlineUnixNano(); got != want {
				t.Fatalf("decided record's router deadline %d, want %d", got, want)
			}
		})
	}
}

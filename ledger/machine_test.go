package ledger

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Table tests of the pure account-shard state machine: one case (at least) per transfer
// status of API.md, account statuses, two-phase transfers, linked chains, refusals, the
// participant side of cross-shard transactions, reads and the logged clock.

// --- harness ---

const (
	testSlotCount = 16
	testEpoch     = 1
	// testT0 is the logged clock of the first command of every test shard.
	testT0 = int64(1_700_000_000) * int64(time.Second)
)

// testShard is one shard over a MemStore: every command runs in its own Applier whose
// overlay is committed, like a raft entry with one command.
type testShard struct {
	t     testing.TB
	store *MemStore
	now   int64 // the clock of the last command sent
}

func allSlots(n uint32) []uint32 {
	s := make([]uint32, n)
	for i := range s {
		s[i] = uint32(i)
	}
	return s
}

// newTestShard returns a shard owning slots (all testSlotCount slots when none given).
func newTestShard(t testing.TB, slots ...uint32) *testShard {
	t.Helper()
	if len(slots) == 0 {
		slots = allSlots(testSlotCount)
	}
	s := &testShard{t: t, store: NewMemStore(), now: testT0}
	r := s.applyAt(testT0, cmdAssign(testEpoch, testSlotCount, slots...))
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED || r.GetEpoch() != testEpoch {
		t.Fatalf("assign slots: %v", r)
	}
	return s
}

// applyAt applies c with the logged clock ts in a fresh Applier and commits its overlay.
func (s *testShard) applyAt(ts int64, c *raftv1.Command) *raftv1.CommandResult {
	s.t.Helper()
	c.TimestampUnixNano = ts
	a, err := NewApplier(s.store)
	if err != nil {
		s.t.Fatalf("new applier: %v", err)
	}
	r, err := a.Apply(c)
	if err != nil {
		s.t.Fatalf("apply %v: %v", c, err)
	}
	s.store.Commit(a.Overlay())
	return r
}

// apply applies c one millisecond after the previous command.
func (s *testShard) apply(c *raftv1.Command) *raftv1.CommandResult {
	s.t.Helper()
	s.now += int64(time.Millisecond)
	return s.applyAt(s.now, c)
}

// wait moves the proposer's clock forward.
func (s *testShard) wait(d time.Duration) { s.now += int64(d) }

func mustAccept(t testing.TB, r *raftv1.CommandResult) {
	t.Helper()
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
		t.Fatalf("command refused: %v %s", r.GetRefusal(), r.GetMessage())
	}
}

func (s *testShard) createAccounts(accs ...*ledgerv1.Account) []ledgerv1.AccountStatus {
	s.t.Helper()
	r := s.apply(cmdAccounts(accs...))
	mustAccept(s.t, r)
	if len(r.GetAccounts()) != len(accs) {
		s.t.Fatalf("%d account results for %d accounts", len(r.GetAccounts()), len(accs))
	}
	out := make([]ledgerv1.AccountStatus, len(accs))
	for i, x := range r.GetAccounts() {
		if x.GetId() != accs[i].GetId() {
			s.t.Fatalf("result %d is for %q, want %q", i, x.GetId(), accs[i].GetId())
		}
		out[i] = x.GetStatus()
	}
	return out
}

func (s *testShard) mustCreateAccounts(accs ...*ledgerv1.Account) {
	s.t.Helper()
	for i, st := range s.createAccounts(accs...) {
		if st != ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED {
			s.t.Fatalf("account %q: %v", accs[i].GetId(), st)
		}
	}
}

// transfers applies one CreateTransfers command and returns the statuses, in order.
func (s *testShard) transfers(ts ...*ledgerv1.Transfer) []ledgerv1.TransferStatus {
	s.t.Helper()
	r := s.apply(cmdTransfers(ts...))
	mustAccept(s.t, r)
	if len(r.GetTransfers()) != len(ts) {
		s.t.Fatalf("%d transfer results for %d transfers", len(r.GetTransfers()), len(ts))
	}
	out := make([]ledgerv1.TransferStatus, len(ts))
	for i, x := range r.GetTransfers() {
		if x.GetId() != ts[i].GetId() {
			s.t.Fatalf("result %d is for %q, want %q", i, x.GetId(), ts[i].GetId())
		}
		out[i] = x.GetStatus()
	}
	return out
}

func (s *testShard) mustTransfer(ts ...*ledgerv1.Transfer) {
	s.t.Helper()
	for i, st := range s.transfers(ts...) {
		if st != stCreated {
			s.t.Fatalf("transfer %q: %v", ts[i].GetId(), st)
		}
	}
}

func (s *testShard) votes(c *raftv1.Command) []*raftv1.Vote {
	s.t.Helper()
	r := s.apply(c)
	mustAccept(s.t, r)
	return r.GetVotes()
}

func (s *testShard) account(id string) *ledgerv1.Account {
	s.t.Helper()
	found, nf, err := ReadAccounts(s.store, []string{id})
	if err != nil || len(found) != 1 {
		s.t.Fatalf("read account %q: found %v, not found %v, err %v", id, found, nf, err)
	}
	return found[0]
}

// bal is an account's four balances.
type bal struct{ dp, cp, dpend, cpend uint64 }

func balOf(a *ledgerv1.Account) bal {
	return bal{dp: a.GetDebitsPosted(), cp: a.GetCreditsPosted(), dpend: a.GetDebitsPending(), cpend: a.GetCreditsPending()}
}

func (b bal) String() string {
	return fmt.Sprintf("{debits posted %d pending %d, credits posted %d pending %d}", b.dp, b.dpend, b.cp, b.cpend)
}

func (s *testShard) wantBal(id string, want bal) {
	s.t.Helper()
	if got := balOf(s.account(id)); got != want {
		s.t.Errorf("account %q: balances %v, want %v", id, got, want)
	}
}

func (s *testShard) readTransfer(id string) *ledgerv1.Transfer {
	s.t.Helper()
	found, nf, err := ReadTransfers(s.store, []string{id})
	if err != nil || len(found) != 1 {
		s.t.Fatalf("read transfer %q: found %v, not found %v, err %v", id, found, nf, err)
	}
	return found[0]
}

func (s *testShard) wantNoTransfer(id string) {
	s.t.Helper()
	found, nf, err := ReadTransfers(s.store, []string{id})
	if err != nil || len(found) != 0 || len(nf) != 1 || nf[0] != id {
		s.t.Errorf("read transfer %q: found %v, not found %v, err %v; want not found", id, found, nf, err)
	}
}

// --- command and message builders ---

func cmdAssign(epoch uint64, count uint32, slots ...uint32) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_AssignSlots{AssignSlots: &raftv1.AssignSlots{Epoch: epoch, SlotCount: count, Slots: slots}}}
}

func cmdAccounts(accs ...*ledgerv1.Account) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_CreateAccounts{CreateAccounts: &raftv1.CreateAccounts{Accounts: accs}}}
}

func cmdTransfers(ts ...*ledgerv1.Transfer) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_CreateTransfers{CreateTransfers: &raftv1.CreateTransfers{Transfers: ts}}}
}

func cmdPrepare(bs ...*raftv1.Branch) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_Prepare{Prepare: &raftv1.PrepareBranches{Branches: bs}}}
}

func cmdResolve(commit bool, refs ...*raftv1.BranchRef) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_Resolve{Resolve: &raftv1.ResolveBranches{Commit: commit, Branches: refs}}}
}

// acct is a USD account with no balance constraint.
func acct(id string) *ledgerv1.Account { return &ledgerv1.Account{Id: id, Currency: "USD"} }

// noOverdraft is a USD account with debits_must_not_exceed_credits.
func noOverdraft(id string) *ledgerv1.Account {
	return &ledgerv1.Account{Id: id, Currency: "USD", DebitsMustNotExceedCredits: true}
}

// creditCapped is a USD account with credits_must_not_exceed_debits.
func creditCapped(id string) *ledgerv1.Account {
	return &ledgerv1.Account{Id: id, Currency: "USD", CreditsMustNotExceedDebits: true}
}

func xfer(id, debit, credit string, amount uint64) *ledgerv1.Transfer {
	return &ledgerv1.Transfer{Id: id, DebitAccountId: debit, CreditAccountId: credit, Amount: amount, Currency: "USD"}
}

func withCurrency(t *ledgerv1.Transfer, c string) *ledgerv1.Transfer { t.Currency = c; return t }
func withCode(t *ledgerv1.Transfer, c uint32) *ledgerv1.Transfer     { t.Code = c; return t }
func linked(t *ledgerv1.Transfer) *ledgerv1.Transfer                 { t.Linked = true; return t }

func pendingXfer(id, debit, credit string, amount uint64, timeoutSeconds uint32) *ledgerv1.Transfer {
	t := xfer(id, debit, credit, amount)
	t.Pending, t.TimeoutSeconds = true, timeoutSeconds
	return t
}

// postXfer posts pending pid (amount 0: the full amount). It names only the debit account,
// which routes it; credit account and currency are taken from the pending transfer.
func postXfer(id, pid, debit string, amount uint64) *ledgerv1.Transfer {
	return &ledgerv1.Transfer{Id: id, PostPendingId: pid, DebitAccountId: debit, Amount: amount}
}

func voidXfer(id, pid, debit string) *ledgerv1.Transfer {
	return &ledgerv1.Transfer{Id: id, VoidPendingId: pid, DebitAccountId: debit}
}

func branch(txn string, index uint32, account string, debit bool, amount uint64) *raftv1.Branch {
	return &raftv1.Branch{TxnId: txn, Index: index, AccountId: account, Debit: debit, Amount: amount, Currency: "USD"}
}

func ref(txn string, index uint32, account string) *raftv1.BranchRef {
	return &raftv1.BranchRef{TxnId: txn, Index: index, AccountId: account}
}

// replayed is the status a retry of a transfer with the same fields returns.
func replayed(s ledgerv1.TransferStatus) ledgerv1.TransferStatus {
	if s == stCreated {
		return stExists
	}
	return s
}

// sameSlotID returns an id, not equal to id, that hashes to id's slot.
func sameSlotID(id, prefix string) string {
	want := SlotOf(id, testSlotCount)
	for i := 0; ; i++ {
		c := fmt.Sprintf("%s%d", prefix, i)
		if c != id && SlotOf(c, testSlotCount) == want {
			return c
		}
	}
}

// --- transfers: one case per status ---

// fixture accounts of the transfer table. alice is funded with 100 by bank.
var (
	twinOfAlice = sameSlotID("alice", "twin-")
)

func newFixtureShard(t testing.TB) *testShard {
	t.Helper()
	s := newTestShard(t)
	s.mustCreateAccounts(
		acct("bank"), noOverdraft("alice"), noOverdraft("bob"), creditCapped("cap"),
		&ledgerv1.Account{Id: "euro", Currency: "EUR"}, acct("src"), acct("big"), noOverdraft(twinOfAlice),
	)
	s.mustTransfer(xfer("fund-alice", "bank", "alice", 100))
	return s
}

func TestTransferStatuses(t *testing.T) {
	const maxU = math.MaxUint64
	type bals = map[string]bal
	// Balances of the fixture after funding.
	aliceFunded := bal{cp: 100}
	cases := []struct {
		name  string
		setup []*ledgerv1.Transfer // one command each; each must be CREATED
		wait  time.Duration        // clock advance before the command under test
		in    []*ledgerv1.Transfer // one command
		want  []ledgerv1.TransferStatus
		after bals // balances after the command (and after its retry)
		read  map[string]ledgerv1.TransferState
	}{
		{
			name:  "created",
			in:    []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 30)},
			want:  []ledgerv1.TransferStatus{stCreated},
			after: bals{"alice": {dp: 30, cp: 100}, "bob": {cp: 30}, "bank": {dp: 100}},
		},
		{
			name:  "exists: same id, same fields after success",
			setup: []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 30)},
			in:    []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 30)},
			want:  []ledgerv1.TransferStatus{stExists},
			after: bals{"alice": {dp: 30, cp: 100}, "bob": {cp: 30}},
		},
		{
			name:  "exists: linked flag is not a field of the transfer",
			setup: []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 30)},
			in:    []*ledgerv1.Transfer{linked(xfer("t1", "alice", "bob", 30)), xfer("t2", "alice", "bob", 1)},
			want:  []ledgerv1.TransferStatus{stExists, stCreated},
			after: bals{"alice": {dp: 31, cp: 100}, "bob": {cp: 31}},
		},
		{
			name:  "id reused: different amount",
			setup: []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 30)},
			in:    []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 31)},
			want:  []ledgerv1.TransferStatus{stIDReused},
			after: bals{"alice": {dp: 30, cp: 100}, "bob": {cp: 30}},
		},
		{
			name:  "id reused: different code, credit account, pending flag",
			setup: []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 30)},
			in: []*ledgerv1.Transfer{withCode(xfer("t1", "alice", "bob", 30), 7), xfer("t1", "alice", "bank", 30),
				pendingXfer("t1", "alice", "bob", 30, 0)},
			want:  []ledgerv1.TransferStatus{stIDReused, stIDReused, stIDReused},
			after: bals{"alice": {dp: 30, cp: 100}, "bob": {cp: 30}},
		},
		{
			name:  "debit account not found",
			in:    []*ledgerv1.Transfer{xfer("t1", "ghost", "bob", 1)},
			want:  []ledgerv1.TransferStatus{stDebitNotFound},
			after: bals{"bob": {}},
		},
		{
			name:  "credit account not found",
			in:    []*ledgerv1.Transfer{xfer("t1", "alice", "ghost", 1)},
			want:  []ledgerv1.TransferStatus{stCreditNotFound},
			after: bals{"alice": aliceFunded},
		},
		{
			name:  "same account",
			in:    []*ledgerv1.Transfer{xfer("t1", "alice", "alice", 1)},
			want:  []ledgerv1.TransferStatus{stSameAccount},
			after: bals{"alice": aliceFunded},
		},
		{
			name:  "currency mismatch: credit account, transfer currency, post currency",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 10, 0)},
			in: []*ledgerv1.Transfer{xfer("t1", "alice", "euro", 1), withCurrency(xfer("t2", "alice", "bob", 1), "EUR"),
				withCurrency(postXfer("t3", "p", "alice", 0), "EUR")},
			want:  []ledgerv1.TransferStatus{stCurrency, stCurrency, stCurrency},
			after: bals{"alice": {cp: 100, dpend: 10}, "euro": {}, "bob": {cpend: 10}},
		},
		{
			name:  "insufficient funds",
			in:    []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 101), pendingXfer("t2", "alice", "bob", 101, 0)},
			want:  []ledgerv1.TransferStatus{stInsufficient, stInsufficient},
			after: bals{"alice": aliceFunded, "bob": {}},
		},
		{
			name:  "insufficient funds: exactly the balance is allowed",
			in:    []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 100), xfer("t2", "alice", "bob", 1)},
			want:  []ledgerv1.TransferStatus{stCreated, stInsufficient},
			after: bals{"alice": {dp: 100, cp: 100}, "bob": {cp: 100}},
		},
		{
			name:  "insufficient funds: reservations count",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 80, 0)},
			in:    []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 21), xfer("t2", "alice", "bob", 20)},
			want:  []ledgerv1.TransferStatus{stInsufficient, stCreated},
			after: bals{"alice": {dp: 20, cp: 100, dpend: 80}, "bob": {cp: 20, cpend: 80}},
		},
		{
			name:  "exceeds debits",
			in:    []*ledgerv1.Transfer{xfer("t1", "bank", "cap", 1)},
			want:  []ledgerv1.TransferStatus{stExceedsDebits},
			after: bals{"cap": {}},
		},
		{
			name:  "exceeds debits: up to the debits is allowed, reservations count",
			setup: []*ledgerv1.Transfer{xfer("d", "cap", "bank", 10), pendingXfer("p", "bank", "cap", 4, 0)},
			in: []*ledgerv1.Transfer{xfer("t1", "bank", "cap", 7), pendingXfer("t2", "bank", "cap", 7, 0),
				xfer("t3", "bank", "cap", 6)},
			want:  []ledgerv1.TransferStatus{stExceedsDebits, stExceedsDebits, stCreated},
			after: bals{"cap": {dp: 10, cp: 6, cpend: 4}},
		},
		{
			name: "invalid amount: zero",
			in: []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 0), pendingXfer("t2", "alice", "bob", 0, 0),
				xfer("t3", "ghost", "ghost", 0)},
			want:  []ledgerv1.TransferStatus{stInvalidAmount, stInvalidAmount, stInvalidAmount},
			after: bals{"alice": aliceFunded, "bob": {}},
		},
		{
			name:  "invalid amount: post above the pending amount",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 50, 0)},
			in:    []*ledgerv1.Transfer{postXfer("t1", "p", "alice", 51)},
			want:  []ledgerv1.TransferStatus{stInvalidAmount},
			after: bals{"alice": {cp: 100, dpend: 50}, "bob": {cpend: 50}},
			read:  map[string]ledgerv1.TransferState{"p": statePending},
		},
		{
			name:  "overflow: debits",
			setup: []*ledgerv1.Transfer{xfer("huge", "src", "big", maxU-5)},
			in:    []*ledgerv1.Transfer{xfer("t1", "src", "bob", 6), pendingXfer("t2", "src", "bob", 6, 0), xfer("t3", "src", "bob", 5)},
			want:  []ledgerv1.TransferStatus{stOverflow, stOverflow, stCreated},
			after: bals{"src": {dp: maxU}, "bob": {cp: 5}, "big": {cp: maxU - 5}},
		},
		{
			name:  "overflow: credits",
			setup: []*ledgerv1.Transfer{xfer("huge", "src", "big", maxU-5)},
			in:    []*ledgerv1.Transfer{xfer("t1", "bank", "big", 6), pendingXfer("t2", "bank", "big", 6, 0), pendingXfer("t3", "bank", "big", 5, 0)},
			want:  []ledgerv1.TransferStatus{stOverflow, stOverflow, stCreated},
			after: bals{"big": {cp: maxU - 5, cpend: 5}, "bank": {dp: 100, dpend: 5}},
		},
		{
			name:  "pending not found: unknown id, a plain transfer, another credit account, another debit account",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 50, 0)},
			in: []*ledgerv1.Transfer{postXfer("t1", "nope", "alice", 0), voidXfer("t2", "fund-alice", "bank"),
				{Id: "t3", PostPendingId: "p", DebitAccountId: "alice", CreditAccountId: "bank"},
				// twinOfAlice hashes to alice's slot, where p's record lives: the post must
				// still not resolve a pending transfer of another debit account.
				postXfer("t4", "p", twinOfAlice, 0), voidXfer("t5", "p", twinOfAlice)},
			want:  []ledgerv1.TransferStatus{stPendingNF, stPendingNF, stPendingNF, stPendingNF, stPendingNF},
			after: bals{"alice": {cp: 100, dpend: 50}, "bob": {cpend: 50}, twinOfAlice: {}},
			read:  map[string]ledgerv1.TransferState{"p": statePending},
		},
		{
			name:  "pending already posted",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 50, 0), postXfer("q", "p", "alice", 0)},
			in:    []*ledgerv1.Transfer{postXfer("t1", "p", "alice", 0), voidXfer("t2", "p", "alice")},
			want:  []ledgerv1.TransferStatus{stAlreadyPosted, stAlreadyPosted},
			after: bals{"alice": {dp: 50, cp: 100}, "bob": {cp: 50}},
			read:  map[string]ledgerv1.TransferState{"p": statePosted},
		},
		{
			name:  "pending already voided",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 50, 0), voidXfer("v", "p", "alice")},
			in:    []*ledgerv1.Transfer{postXfer("t1", "p", "alice", 0), voidXfer("t2", "p", "alice")},
			want:  []ledgerv1.TransferStatus{stAlreadyVoided, stAlreadyVoided},
			after: bals{"alice": {cp: 100}, "bob": {}},
			read:  map[string]ledgerv1.TransferState{"p": stateVoided},
		},
		{
			name:  "pending expired: the reservation is released",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 50, 10)},
			wait:  11 * time.Second,
			in:    []*ledgerv1.Transfer{postXfer("t1", "p", "alice", 0), voidXfer("t2", "p", "alice")},
			want:  []ledgerv1.TransferStatus{stExpired, stExpired},
			after: bals{"alice": {cp: 100}, "bob": {}},
			read:  map[string]ledgerv1.TransferState{"p": stateExpired},
		},
		{
			name:  "pending expired: at exactly the timeout",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 50, 10)},
			wait:  10*time.Second - time.Millisecond, // apply adds 1ms
			in:    []*ledgerv1.Transfer{voidXfer("t1", "p", "alice")},
			want:  []ledgerv1.TransferStatus{stExpired},
			after: bals{"alice": {cp: 100}, "bob": {}},
			read:  map[string]ledgerv1.TransferState{"p": stateExpired},
		},
		{
			name:  "pending not yet expired: post succeeds",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 50, 10)},
			wait:  9 * time.Second,
			in:    []*ledgerv1.Transfer{postXfer("t1", "p", "alice", 0)},
			want:  []ledgerv1.TransferStatus{stCreated},
			after: bals{"alice": {dp: 50, cp: 100}, "bob": {cp: 50}},
			read:  map[string]ledgerv1.TransferState{"p": statePosted},
		},
		{
			name:  "post: full amount when amount is zero",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 60, 0)},
			in:    []*ledgerv1.Transfer{postXfer("t1", "p", "alice", 0)},
			want:  []ledgerv1.TransferStatus{stCreated},
			after: bals{"alice": {dp: 60, cp: 100}, "bob": {cp: 60}},
			read:  map[string]ledgerv1.TransferState{"p": statePosted},
		},
		{
			name:  "post: a partial amount releases the rest",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 60, 0)},
			in:    []*ledgerv1.Transfer{postXfer("t1", "p", "alice", 25)},
			want:  []ledgerv1.TransferStatus{stCreated},
			after: bals{"alice": {dp: 25, cp: 100}, "bob": {cp: 25}},
			read:  map[string]ledgerv1.TransferState{"p": statePosted},
		},
		{
			name:  "post naming every field of the pending transfer",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 60, 0)},
			in: []*ledgerv1.Transfer{{Id: "t1", PostPendingId: "p", DebitAccountId: "alice", CreditAccountId: "bob",
				Amount: 60, Currency: "USD"}},
			want:  []ledgerv1.TransferStatus{stCreated},
			after: bals{"alice": {dp: 60, cp: 100}, "bob": {cp: 60}},
		},
		{
			name:  "void releases the reservation",
			setup: []*ledgerv1.Transfer{pendingXfer("p", "alice", "bob", 60, 0)},
			in:    []*ledgerv1.Transfer{voidXfer("t1", "p", "alice"), xfer("t2", "alice", "bob", 100)},
			want:  []ledgerv1.TransferStatus{stCreated, stCreated},
			after: bals{"alice": {dp: 100, cp: 100}, "bob": {cp: 100}},
			read:  map[string]ledgerv1.TransferState{"p": stateVoided},
		},
		{
			name: "linked event failed: the 2nd of a chain fails, the 1st is undone",
			in: []*ledgerv1.Transfer{linked(xfer("t1", "alice", "bob", 30)), xfer("t2", "alice", "bob", 500),
				xfer("t3", "alice", "bob", 5)},
			want:  []ledgerv1.TransferStatus{stLinkedFailed, stInsufficient, stCreated},
			after: bals{"alice": {dp: 5, cp: 100}, "bob": {cp: 5}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newFixtureShard(t)
			for _, x := range tc.setup {
				s.mustTransfer(x)
			}
			s.wait(tc.wait)
			check := func(round string, want []ledgerv1.TransferStatus) {
				t.Helper()
				got := s.transfers(tc.in...)
				for i := range want {
					if got[i] != want[i] {
						t.Errorf("%s: transfer %d (%s): %v, want %v", round, i, tc.in[i].GetId(), got[i], want[i])
					}
				}
				for id, b := range tc.after {
					s.wantBal(id, b)
				}
				for id, st := range tc.read {
					if got := s.readTransfer(id).GetState(); got != st {
						t.Errorf("%s: transfer %q state %v, want %v", round, id, got, st)
					}
				}
				for i, x := range tc.in {
					if got[i] != stCreated && got[i] != stExists && got[i] != stIDReused {
						s.wantNoTransfer(x.GetId()) // a failed transfer is not found
					}
				}
			}
			check("first", tc.want)
			// One outcome forever: a retry of the same command answers the same (CREATED
			// becomes EXISTS) and changes no balance.
			again := make([]ledgerv1.TransferStatus, len(tc.want))
			for i, w := range tc.want {
				again[i] = replayed(w)
			}
			s.wait(time.Minute)
			check("retry", again)
		})
	}
}

// A failed transfer keeps its failure even after the reason is gone; a new id succeeds.
func TestFailedTransferKeepsItsOutcome(t *testing.T) {
	s := newFixtureShard(t)
	in := []*ledgerv1.Transfer{xfer("t1", "alice", "bob", 150), xfer("t2", "alice", "carol", 10), postXfer("t3", "p", "alice", 0)}
	want := []ledgerv1.TransferStatus{stInsufficient, stCreditNotFound, stPendingNF}
	if got := s.transfers(in...); !equalStatuses(got, want) {
		t.Fatalf("first: %v, want %v", got, want)
	}
	// Remove every reason: funds arrive, carol and p now exist.
	s.mustCreateAccounts(noOverdraft("carol"))
	s.mustTransfer(xfer("more", "bank", "alice", 1000), pendingXfer("p", "alice", "bob", 5, 0))
	if got := s.transfers(xfer("t1", "alice", "bob", 150), xfer("t2", "alice", "carol", 10), postXfer("t3", "p", "alice", 0)); !equalStatuses(got, want) {
		t.Fatalf("retry: %v, want %v", got, want)
	}
	s.wantBal("alice", bal{cp: 1100, dpend: 5})
	s.wantBal("carol", bal{})
	// The same request under new ids succeeds.
	s.mustTransfer(xfer("t1b", "alice", "bob", 150), xfer("t2b", "alice", "carol", 10), postXfer("t3b", "p", "alice", 0))
	s.wantBal("alice", bal{dp: 165, cp: 1100})
	// A retry with different fields of a failed id is ID_REUSED.
	if got := s.transfers(xfer("t1", "alice", "bob", 149)); got[0] != stIDReused {
		t.Fatalf("different fields: %v, want ID_REUSED", got[0])
	}
}

func equalStatuses(a, b []ledgerv1.TransferStatus) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLinkedChains(t *testing.T) {
	t.Run("2nd fails: 1st undone, retry answers the same", func(t *testing.T) {
		s := newFixtureShard(t)
		chain := func() []*ledgerv1.Transfer {
			return []*ledgerv1.Transfer{linked(xfer("l1", "alice", "bob", 30)), xfer("l2", "alice", "bob", 500)}
		}
		want := []ledgerv1.TransferStatus{stLinkedFailed, stInsufficient}
		if got := s.transfers(chain()...); !equalStatuses(got, want) {
			t.Fatalf("first: %v, want %v", got, want)
		}
		s.wantBal("alice", bal{cp: 100})
		s.wantBal("bob", bal{})
		s.wantNoTransfer("l1")
		s.wantNoTransfer("l2")
		// Funds arrive; the chain still fails the same way.
		s.mustTransfer(xfer("more", "bank", "alice", 1000))
		if got := s.transfers(chain()...); !equalStatuses(got, want) {
			t.Fatalf("retry: %v, want %v", got, want)
		}
		s.wantBal("alice", bal{cp: 1100})
		s.wantBal("bob", bal{})
	})
	t.Run("chain of three, the middle fails", func(t *testing.T) {
		s := newFixtureShard(t)
		got := s.transfers(linked(xfer("l1", "alice", "bob", 10)), linked(xfer("l2", "alice", "ghost", 10)),
			xfer("l3", "alice", "bob", 10), xfer("solo", "alice", "bob", 1))
		want := []ledgerv1.TransferStatus{stLinkedFailed, stCreditNotFound, stLinkedFailed, stCreated}
		if !equalStatuses(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		s.wantBal("alice", bal{dp: 1, cp: 100})
		// l3 never ran, yet its id has its outcome now.
		if got := s.transfers(xfer("l3", "alice", "bob", 10)); got[0] != stLinkedFailed {
			t.Fatalf("l3 alone: %v", got[0])
		}
	})
	t.Run("all succeed, then EXISTS", func(t *testing.T) {
		s := newFixtureShard(t)
		chain := func() []*ledgerv1.Transfer {
			return []*ledgerv1.Transfer{linked(pendingXfer("p", "alice", "bob", 40, 0)), linked(postXfer("q", "p", "alice", 15)),
				xfer("l3", "bob", "alice", 15)}
		}
		if got := s.transfers(chain()...); !equalStatuses(got, []ledgerv1.TransferStatus{stCreated, stCreated, stCreated}) {
			t.Fatalf("got %v", got)
		}
		s.wantBal("alice", bal{dp: 15, cp: 115})
		s.wantBal("bob", bal{dp: 15, cp: 15})
		if got := s.transfers(chain()...); !equalStatuses(got, []ledgerv1.TransferStatus{stExists, stExists, stExists}) {
			t.Fatalf("retry: %v", got)
		}
		s.wantBal("alice", bal{dp: 15, cp: 115})
	})
	t.Run("a post and a void undone with their chain", func(t *testing.T) {
		s := newFixtureShard(t)
		s.mustTransfer(pendingXfer("p1", "alice", "bob", 40, 0), pendingXfer("p2", "alice", "bob", 20, 0))
		got := s.transfers(linked(postXfer("q", "p1", "alice", 0)), linked(voidXfer("v", "p2", "alice")), xfer("l3", "alice", "bob", 61))
		if !equalStatuses(got, []ledgerv1.TransferStatus{stLinkedFailed, stLinkedFailed, stInsufficient}) {
			t.Fatalf("got %v", got)
		}
		s.wantBal("alice", bal{cp: 100, dpend: 60})
		if st := s.readTransfer("p1").GetState(); st != statePending {
			t.Fatalf("p1 is %v after its post was undone", st)
		}
		// p1 and p2 can still be resolved under new ids.
		s.mustTransfer(postXfer("q2", "p1", "alice", 0), voidXfer("v2", "p2", "alice"))
		s.wantBal("alice", bal{dp: 40, cp: 100})
	})
	t.Run("an earlier success in the chain keeps its outcome and effect", func(t *testing.T) {
		s := newFixtureShard(t)
		s.mustTransfer(xfer("old", "alice", "bob", 10))
		got := s.transfers(linked(xfer("old", "alice", "bob", 10)), linked(xfer("new", "alice", "bob", 10)), xfer("bad", "alice", "alice", 1))
		if !equalStatuses(got, []ledgerv1.TransferStatus{stExists, stLinkedFailed, stSameAccount}) {
			t.Fatalf("got %v", got)
		}
		s.wantBal("alice", bal{dp: 10, cp: 100})
	})
	t.Run("an id repeated inside a failing chain has one outcome", func(t *testing.T) {
		s := newFixtureShard(t)
		in := []*ledgerv1.Transfer{linked(xfer("x", "alice", "bob", 10)), linked(xfer("x", "alice", "bob", 10)),
			xfer("bad", "alice", "bob", 1000)}
		got := s.transfers(in...)
		if got[0] != stLinkedFailed || got[1] != got[0] || got[2] != stInsufficient {
			t.Fatalf("got %v, want [LINKED_EVENT_FAILED LINKED_EVENT_FAILED INSUFFICIENT_FUNDS]", got)
		}
		if got := s.transfers(xfer("x", "alice", "bob", 10)); got[0] != stLinkedFailed {
			t.Fatalf("retry of x: %v", got[0])
		}
		s.wantBal("alice", bal{cp: 100})
	})
	t.Run("an id repeated with other fields after the failure in a chain", func(t *testing.T) {
		s := newFixtureShard(t)
		got := s.transfers(linked(xfer("bad", "alice", "bob", 1000)), linked(xfer("y", "alice", "bob", 10)), xfer("y", "alice", "bob", 11))
		want := []ledgerv1.TransferStatus{stInsufficient, stLinkedFailed, stIDReused}
		if !equalStatuses(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		if got := s.transfers(xfer("y", "alice", "bob", 10)); got[0] != stLinkedFailed {
			t.Fatalf("retry of y: %v", got[0])
		}
	})
	t.Run("an unclosed chain is refused whole", func(t *testing.T) {
		s := newFixtureShard(t)
		r := s.apply(cmdTransfers(xfer("a1", "alice", "bob", 1), linked(xfer("a2", "alice", "bob", 1))))
		if r.GetRefusal() != raftv1.Refusal_REFUSAL_MALFORMED || len(r.GetTransfers()) != 0 {
			t.Fatalf("got %v", r)
		}
		s.wantBal("alice", bal{cp: 100})
		s.wantNoTransfer("a1")
	})
}

// --- accounts ---

func TestAccountStatuses(t *testing.T) {
	const (
		created = ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED
		exists  = ledgerv1.AccountStatus_ACCOUNT_STATUS_EXISTS
		reused  = ledgerv1.AccountStatus_ACCOUNT_STATUS_ID_REUSED
		invalid = ledgerv1.AccountStatus_ACCOUNT_STATUS_INVALID
	)
	s := newTestShard(t)
	s.mustCreateAccounts(&ledgerv1.Account{Id: "a", Currency: "USD", DebitsMustNotExceedCredits: true, UserData: "u"})
	cases := []struct {
		name string
		in   *ledgerv1.Account
		want ledgerv1.AccountStatus
	}{
		{"created", acct("b"), created},
		{"exists", &ledgerv1.Account{Id: "a", Currency: "USD", DebitsMustNotExceedCredits: true, UserData: "u"}, exists},
		{"id reused: currency", &ledgerv1.Account{Id: "a", Currency: "EUR", DebitsMustNotExceedCredits: true, UserData: "u"}, reused},
		{"id reused: flags", &ledgerv1.Account{Id: "a", Currency: "USD", UserData: "u"}, reused},
		{"id reused: user data", &ledgerv1.Account{Id: "a", Currency: "USD", DebitsMustNotExceedCredits: true}, reused},
		{"invalid: empty id", acct(""), invalid},
		{"invalid: id charset", acct("a/b"), invalid},
		{"invalid: id too long", acct(strings.Repeat("x", IDLengthMax+1)), invalid},
		{"invalid: currency lower case", &ledgerv1.Account{Id: "c", Currency: "usd"}, invalid},
		{"invalid: currency too short", &ledgerv1.Account{Id: "c", Currency: "US"}, invalid},
		{"invalid: both flags", &ledgerv1.Account{Id: "c", Currency: "USD", DebitsMustNotExceedCredits: true, CreditsMustNotExceedDebits: true}, invalid},
		{"invalid: balances set", &ledgerv1.Account{Id: "c", Currency: "USD", CreditsPosted: 5}, invalid},
		{"invalid: created_at set", &ledgerv1.Account{Id: "c", Currency: "USD", CreatedAt: s.account("a").GetCreatedAt()}, invalid},
		{"invalid: user data too long", &ledgerv1.Account{Id: "c", Currency: "USD", UserData: strings.Repeat("x", UserDataBytesMax+1)}, invalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := s.apply(cmdAccounts(tc.in))
			mustAccept(t, r)
			got := r.GetAccounts()[0]
			if got.GetStatus() != tc.want {
				t.Fatalf("%v (%s), want %v", got.GetStatus(), got.GetMessage(), tc.want)
			}
			if tc.want == invalid && got.GetMessage() == "" {
				t.Errorf("INVALID without a message")
			}
		})
	}
	// "c" was never created by the invalid attempts; "a" kept its first fields.
	if _, nf, _ := ReadAccounts(s.store, []string{"c"}); len(nf) != 1 {
		t.Errorf("account c exists after invalid attempts")
	}
	if a := s.account("a"); a.GetCurrency() != "USD" || a.GetUserData() != "u" || !a.GetDebitsMustNotExceedCredits() {
		t.Errorf("account a changed: %v", a)
	}
	// Within one command: the first creates, the repeat exists, a variant is reused.
	got := s.createAccounts(acct("d"), acct("d"), noOverdraft("d"), acct("bad id"))
	if want := []ledgerv1.AccountStatus{created, exists, reused, invalid}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("one command: %v, want %v", got, want)
	}
}

// --- refusals ---

// A refused command has no effect at all: the state hash after committing its entry is the
// hash before.
func TestRefusalsChangeNothing(t *testing.T) {
	t.Run("not initialized", func(t *testing.T) {
		store := NewMemStore()
		// The baseline: an entry that applied nothing (the adapter commits the overlay of
		// every entry, which holds the shard's bookkeeping record).
		a, err := NewApplier(store)
		if err != nil {
			t.Fatal(err)
		}
		store.Commit(a.Overlay())
		before := store.Hash()
		cmds := []*raftv1.Command{
			cmdAccounts(acct("a")),
			cmdTransfers(xfer("t", "a", "b", 1)),
			cmdPrepare(branch("tx", 0, "a", true, 1)),
			cmdResolve(false, ref("tx", 0, "a")),
			{}, // no op at all
		}
		for i, c := range cmds {
			c.TimestampUnixNano = testT0 + int64(i+1)*int64(time.Hour)
			a, err := NewApplier(store)
			if err != nil {
				t.Fatal(err)
			}
			r, err := a.Apply(c)
			if err != nil {
				t.Fatal(err)
			}
			if r.GetRefusal() != raftv1.Refusal_REFUSAL_NOT_INITIALIZED {
				t.Errorf("command %d: %v, want NOT_INITIALIZED", i, r)
			}
			store.Commit(a.Overlay())
			if !bytes.Equal(before, store.Hash()) {
				t.Errorf("command %d: the state hash changed", i)
			}
		}
		if found, _, _ := ReadAccounts(store, []string{"a"}); len(found) != 0 {
			t.Errorf("account created on an uninitialized shard")
		}
	})
	t.Run("wrong shard", func(t *testing.T) {
		var owned []uint32
		for i := uint32(0); i < testSlotCount/2; i++ {
			owned = append(owned, i)
		}
		s := newTestShard(t, owned...)
		var mine, theirs []string
		for i := 0; len(mine) < 3 || len(theirs) < 2; i++ {
			id := fmt.Sprintf("acc-%d", i)
			if SlotOf(id, testSlotCount) < testSlotCount/2 {
				mine = append(mine, id)
			} else {
				theirs = append(theirs, id)
			}
		}
		s.mustCreateAccounts(acct(mine[0]), acct(mine[1]))
		s.mustTransfer(pendingXfer("p", mine[0], mine[1], 10, 0))
		s.votes(cmdPrepare(branch("tx", 0, mine[0], true, 5)))
		before := s.store.Hash()
		cmds := []*raftv1.Command{
			cmdAccounts(acct(mine[2]), acct(theirs[0])),
			cmdTransfers(xfer("t1", mine[0], mine[1], 1), xfer("t2", mine[0], theirs[0], 1)),
			cmdTransfers(xfer("t3", theirs[0], mine[1], 1)),
			cmdTransfers(postXfer("t4", "p", mine[0], 0), xfer("t5", theirs[1], theirs[0], 1)),
			cmdPrepare(branch("tx2", 0, mine[0], true, 1), branch("tx2", 1, theirs[0], false, 1)),
			cmdResolve(true, ref("tx", 0, mine[0]), ref("tx3", 0, theirs[0])),
			cmdResolve(false, ref("tx", 0, mine[0]), ref("tx3", 0, theirs[0])),
		}
		for i, c := range cmds {
			s.wait(time.Hour)
			r := s.apply(c)
			if r.GetRefusal() != raftv1.Refusal_REFUSAL_WRONG_SHARD || r.GetEpoch() != testEpoch {
				t.Errorf("command %d: %v, want WRONG_SHARD at epoch %d", i, r, testEpoch)
			}
			if len(r.GetAccounts())+len(r.GetTransfers())+len(r.GetVotes()) != 0 {
				t.Errorf("command %d: refused with item results: %v", i, r)
			}
			if !bytes.Equal(before, s.store.Hash()) {
				t.Errorf("command %d: the state hash changed", i)
			}
		}
		s.wantBal(mine[0], bal{dpend: 15})
	})
	t.Run("malformed", func(t *testing.T) {
		s := newFixtureShard(t)
		before := s.store.Hash()
		cmds := []*raftv1.Command{
			cmdTransfers(xfer("ok", "alice", "bob", 1), xfer("bad id", "alice", "bob", 1)),
			cmdTransfers(xfer("ok", "alice", "bob", 1), &ledgerv1.Transfer{Id: "x", PostPendingId: "p", VoidPendingId: "p", DebitAccountId: "alice"}),
			cmdTransfers(&ledgerv1.Transfer{Id: "x", DebitAccountId: "alice", CreditAccountId: "bob", Amount: 1, Currency: "USD", TimeoutSeconds: 5}),
			cmdPrepare(branch("tx", 0, "alice", true, 1), branch("", 1, "bob", false, 1)),
			cmdResolve(true, ref("tx", 0, "")),
			cmdAssign(testEpoch+1, testSlotCount*2, 0),
			cmdAssign(testEpoch+1, testSlotCount, testSlotCount),
			{},
		}
		for i, c := range cmds {
			s.wait(time.Hour)
			r := s.apply(c)
			if r.GetRefusal() != raftv1.Refusal_REFUSAL_MALFORMED {
				t.Errorf("command %d: %v, want MALFORMED", i, r)
			}
			if !bytes.Equal(before, s.store.Hash()) {
				t.Errorf("command %d: the state hash changed", i)
			}
		}
		s.wantNoTransfer("ok")
	})
}

func TestAssignSlots(t *testing.T) {
	s := newTestShard(t)
	s.mustCreateAccounts(acct("a"), acct("b"))
	slotA := SlotOf("a", testSlotCount)
	// A stale or repeated epoch changes nothing.
	before := s.store.Hash()
	r := s.applyAt(s.now, cmdAssign(testEpoch, testSlotCount, slotA))
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED || r.GetEpoch() != testEpoch {
		t.Fatalf("repeated epoch: %v", r)
	}
	if !bytes.Equal(before, s.store.Hash()) {
		t.Fatalf("a repeated epoch changed the state")
	}
	// A newer epoch without a's slot: a is refused, b still served (if b's slot stays).
	var rest []uint32
	for i := uint32(0); i < testSlotCount; i++ {
		if i != slotA {
			rest = append(rest, i)
		}
	}
	if r := s.apply(cmdAssign(testEpoch+1, testSlotCount, rest...)); r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED || r.GetEpoch() != testEpoch+1 {
		t.Fatalf("new epoch: %v", r)
	}
	if r := s.apply(cmdTransfers(xfer("t", "a", "b", 1))); r.GetRefusal() != raftv1.Refusal_REFUSAL_WRONG_SHARD || r.GetEpoch() != testEpoch+1 {
		t.Fatalf("transfer from a moved slot: %v", r)
	}
	// An older epoch cannot give the slot back.
	s.apply(cmdAssign(testEpoch, testSlotCount, allSlots(testSlotCount)...))
	if r := s.apply(cmdTransfers(xfer("t", "a", "b", 1))); r.GetRefusal() != raftv1.Refusal_REFUSAL_WRONG_SHARD {
		t.Fatalf("an old epoch was applied: %v", r)
	}
}

// --- the participant side of cross-shard transactions ---

func wantVote(t *testing.T, v *raftv1.Vote, txn string, index uint32, state raftv1.BranchState, status ledgerv1.TransferStatus) {
	t.Helper()
	if v.GetTxnId() != txn || v.GetIndex() != index || v.GetState() != state || v.GetStatus() != status {
		t.Fatalf("vote %v, want %s/%d %v %v", v, txn, index, state, status)
	}
}

func TestBranches(t *testing.T) {
	s := newFixtureShard(t) // alice: 100 credits, no overdraft
	t.Run("prepare reserves, repeat answers the same, commit posts, repeat is a no-op", func(t *testing.T) {
		vs := s.votes(cmdPrepare(branch("tx1", 0, "alice", true, 40), branch("tx1", 1, "bob", false, 40)))
		wantVote(t, vs[0], "tx1", 0, brPrepared, stCreated)
		wantVote(t, vs[1], "tx1", 1, brPrepared, stCreated)
		s.wantBal("alice", bal{cp: 100, dpend: 40})
		s.wantBal("bob", bal{cpend: 40})
		// The reservation counts against later debits.
		if got := s.transfers(xfer("t-over", "alice", "bob", 61)); got[0] != stInsufficient {
			t.Fatalf("transfer over the reservation: %v", got[0])
		}
		vs = s.votes(cmdPrepare(branch("tx1", 0, "alice", true, 40), branch("tx1", 1, "bob", false, 40)))
		wantVote(t, vs[0], "tx1", 0, brPrepared, stCreated)
		wantVote(t, vs[1], "tx1", 1, brPrepared, stCreated)
		s.wantBal("alice", bal{cp: 100, dpend: 40})
		for round := 0; round < 2; round++ {
			vs = s.votes(cmdResolve(true, ref("tx1", 0, "alice"), ref("tx1", 1, "bob")))
			wantVote(t, vs[0], "tx1", 0, brCommitted, stCreated)
			wantVote(t, vs[1], "tx1", 1, brCommitted, stCreated)
			s.wantBal("alice", bal{dp: 40, cp: 100})
			s.wantBal("bob", bal{cp: 40})
		}
		// Abort after commit changes nothing; neither does a late prepare.
		vs = s.votes(cmdResolve(false, ref("tx1", 0, "alice")))
		wantVote(t, vs[0], "tx1", 0, brCommitted, stCreated)
		vs = s.votes(cmdPrepare(branch("tx1", 0, "alice", true, 40)))
		wantVote(t, vs[0], "tx1", 0, brCommitted, stCreated)
		s.wantBal("alice", bal{dp: 40, cp: 100})
	})
	t.Run("abort releases, repeat is a no-op, commit after abort changes nothing", func(t *testing.T) {
		vs := s.votes(cmdPrepare(branch("tx2", 0, "alice", true, 20), branch("tx2", 1, "bob", false, 20)))
		wantVote(t, vs[0], "tx2", 0, brPrepared, stCreated)
		s.wantBal("alice", bal{dp: 40, cp: 100, dpend: 20})
		for round := 0; round < 2; round++ {
			vs = s.votes(cmdResolve(false, ref("tx2", 0, "alice"), ref("tx2", 1, "bob")))
			wantVote(t, vs[0], "tx2", 0, brAborted, stCreated)
			wantVote(t, vs[1], "tx2", 1, brAborted, stCreated)
			s.wantBal("alice", bal{dp: 40, cp: 100})
			s.wantBal("bob", bal{cp: 40})
		}
		vs = s.votes(cmdResolve(true, ref("tx2", 0, "alice")))
		wantVote(t, vs[0], "tx2", 0, brAborted, stCreated)
		s.wantBal("alice", bal{dp: 40, cp: 100})
	})
	t.Run("abort of an unknown branch leaves a tombstone", func(t *testing.T) {
		before := balOf(s.account("alice"))
		vs := s.votes(cmdResolve(false, ref("tx3", 0, "alice")))
		wantVote(t, vs[0], "tx3", 0, brAborted, ledgerv1.TransferStatus_TRANSFER_STATUS_UNSPECIFIED)
		vs = s.votes(cmdPrepare(branch("tx3", 0, "alice", true, 10)))
		if vs[0].GetState() != brAborted {
			t.Fatalf("late prepare after abort: %v, want ABORTED", vs[0])
		}
		if got := balOf(s.account("alice")); got != before {
			t.Fatalf("late prepare reserved: %v, before %v", got, before)
		}
		// A commit of it changes nothing either.
		vs = s.votes(cmdResolve(true, ref("tx3", 0, "alice")))
		if vs[0].GetState() != brAborted {
			t.Fatalf("commit after tombstone: %v", vs[0])
		}
		if got := balOf(s.account("alice")); got != before {
			t.Fatalf("commit after tombstone moved money: %v, before %v", got, before)
		}
	})
	t.Run("commit of an unknown branch records nothing", func(t *testing.T) {
		vs := s.votes(cmdResolve(true, ref("tx4", 0, "alice")))
		if vs[0].GetState() != raftv1.BranchState_BRANCH_STATE_UNSPECIFIED || vs[0].GetMessage() == "" {
			t.Fatalf("commit of unknown: %v", vs[0])
		}
		vs = s.votes(cmdPrepare(branch("tx4", 0, "alice", true, 1)))
		wantVote(t, vs[0], "tx4", 0, brPrepared, stCreated)
		s.votes(cmdResolve(false, ref("tx4", 0, "alice")))
	})
	t.Run("prepare refused: votes REFUSED, reserves nothing", func(t *testing.T) {
		before := balOf(s.account("alice")) // 60 available
		cases := []struct {
			b    *raftv1.Branch
			want ledgerv1.TransferStatus
		}{
			{branch("tx5", 0, "alice", true, 61), stInsufficient},
			{branch("tx5", 1, "ghost", true, 1), stDebitNotFound},
			{branch("tx5", 2, "ghost", false, 1), stCreditNotFound},
			{&raftv1.Branch{TxnId: "tx5", Index: 3, AccountId: "euro", Amount: 1, Currency: "USD"}, stCurrency},
			{branch("tx5", 4, "alice", true, 0), stInvalidAmount},
			{branch("tx5", 5, "cap", false, 1), stExceedsDebits},
		}
		for _, tc := range cases {
			vs := s.votes(cmdPrepare(tc.b))
			wantVote(t, vs[0], "tx5", tc.b.Index, brRefused, tc.want)
			// The refusal is the branch's outcome: a repeat answers the same.
			vs = s.votes(cmdPrepare(tc.b))
			wantVote(t, vs[0], "tx5", tc.b.Index, brRefused, tc.want)
			// Commit cannot turn it into money.
			vs = s.votes(cmdResolve(true, ref("tx5", tc.b.Index, tc.b.AccountId)))
			wantVote(t, vs[0], "tx5", tc.b.Index, brRefused, tc.want)
		}
		if got := balOf(s.account("alice")); got != before {
			t.Fatalf("refused prepares changed alice: %v, before %v", got, before)
		}
		s.wantBal("cap", bal{})
		// Aborting a refused branch makes it aborted.
		vs := s.votes(cmdResolve(false, ref("tx5", 0, "alice")))
		wantVote(t, vs[0], "tx5", 0, brAborted, stInsufficient)
		vs = s.votes(cmdPrepare(branch("tx5", 0, "alice", true, 1)))
		wantVote(t, vs[0], "tx5", 0, brAborted, stInsufficient)
		s.wantBal("alice", before)
	})
	t.Run("exactly the available amount may be reserved", func(t *testing.T) {
		vs := s.votes(cmdPrepare(branch("tx6", 0, "alice", true, 60), branch("tx6", 1, "alice", true, 1)))
		wantVote(t, vs[0], "tx6", 0, brPrepared, stCreated)
		wantVote(t, vs[1], "tx6", 1, brRefused, stInsufficient)
		s.wantBal("alice", bal{dp: 40, cp: 100, dpend: 60})
		s.votes(cmdResolve(true, ref("tx6", 0, "alice")))
		s.wantBal("alice", bal{dp: 100, cp: 100})
	})
}

// --- reads ---

func TestReadAccountsAndTransfers(t *testing.T) {
	s := newTestShard(t)
	in := &ledgerv1.Account{Id: "r1", Currency: "EUR", DebitsMustNotExceedCredits: true, UserData: "hello"}
	s.mustCreateAccounts(proto.Clone(in).(*ledgerv1.Account), &ledgerv1.Account{Id: "r2", Currency: "EUR"})
	createdAt := s.now
	found, nf, err := ReadAccounts(s.store, []string{"r1", "missing", "r2"})
	if err != nil || len(found) != 2 || len(nf) != 1 || nf[0] != "missing" {
		t.Fatalf("read accounts: %v %v %v", found, nf, err)
	}
	got := found[0]
	if got.GetId() != "r1" || got.GetCurrency() != "EUR" || !got.GetDebitsMustNotExceedCredits() || got.GetCreditsMustNotExceedDebits() ||
		got.GetUserData() != "hello" || got.GetCreatedAt().AsTime().UnixNano() != createdAt || balOf(got) != (bal{}) {
		t.Fatalf("account r1 read back as %v", got)
	}
	if found[1].GetId() != "r2" {
		t.Fatalf("accounts out of order: %v", found)
	}

	tr := &ledgerv1.Transfer{Id: "x1", DebitAccountId: "r2", CreditAccountId: "r1", Amount: 70, Currency: "EUR", Code: 42, UserData: "ud"}
	s.mustTransfer(proto.Clone(tr).(*ledgerv1.Transfer))
	x1At := s.now
	s.mustTransfer(&ledgerv1.Transfer{Id: "p1", DebitAccountId: "r1", CreditAccountId: "r2", Amount: 50, Currency: "EUR", Pending: true, TimeoutSeconds: 60})
	if got := s.transfers(xfer("f1", "r1", "r2", 1)); got[0] != stCurrency {
		t.Fatalf("f1: %v", got[0])
	}
	ts, nf, err := ReadTransfers(s.store, []string{"x1", "f1", "p1", "nope"})
	if err != nil || len(ts) != 2 || len(nf) != 2 || nf[0] != "f1" || nf[1] != "nope" {
		t.Fatalf("read transfers: %v %v %v", ts, nf, err)
	}
	x := ts[0]
	if x.GetId() != "x1" || x.GetDebitAccountId() != "r2" || x.GetCreditAccountId() != "r1" || x.GetAmount() != 70 ||
		x.GetCurrency() != "EUR" || x.GetCode() != 42 || x.GetUserData() != "ud" || x.GetPending() ||
		x.GetCreatedAt().AsTime().UnixNano() != x1At || x.GetState() != ledgerv1.TransferState_TRANSFER_STATE_UNSPECIFIED {
		t.Fatalf("x1 read back as %v", x)
	}
	if p := ts[1]; p.GetId() != "p1" || !p.GetPending() || p.GetTimeoutSeconds() != 60 || p.GetState() != statePending || p.GetAmount() != 50 {
		t.Fatalf("p1 read back as %v", p)
	}
	// A post naming only the pending id and debit account reads back with the effective
	// amount and currency.
	s.mustTransfer(postXfer("q1", "p1", "r1", 20))
	if q := s.readTransfer("q1"); q.GetAmount() != 20 || q.GetCurrency() != "EUR" || q.GetPostPendingId() != "p1" {
		t.Fatalf("q1 read back as %v", q)
	}
	if p := s.readTransfer("p1"); p.GetState() != statePosted || p.GetAmount() != 50 {
		t.Fatalf("p1 after post: %v", p)
	}
	s.wantBal("r1", bal{dp: 20, cp: 70})
	s.wantBal("r2", bal{dp: 70, cp: 20})
	// A transfer undone with its chain is not found.
	s.transfers(linked(xfer("l1", "r2", "r1", 1)), xfer("l2", "r2", "r2", 1))
	s.wantNoTransfer("l1")
	// An uninitialized store has nothing.
	if found, nf, err := ReadAccounts(NewMemStore(), []string{"r1"}); err != nil || len(found) != 0 || len(nf) != 1 {
		t.Fatalf("read from an empty store: %v %v %v", found, nf, err)
	}
}

// --- the logged clock ---

func TestMonotonicTime(t *testing.T) {
	s := newTestShard(t)
	late := testT0 + 100*int64(time.Second)
	mustAccept(t, s.applyAt(late, cmdAccounts(noOverdraft("a"), acct("bank"))))
	// A command with an older timestamp does not move time backwards.
	mustAccept(t, s.applyAt(testT0+int64(time.Second), cmdAccounts(acct("b"))))
	if got := s.account("b").GetCreatedAt().AsTime().UnixNano(); got != late {
		t.Fatalf("b created at %d, want %d (not before a)", got, late)
	}
	if got := s.account("a").GetCreatedAt().AsTime().UnixNano(); got != late {
		t.Fatalf("a created at %d, want %d", got, late)
	}
	// A pending transfer's timeout counts from the monotonic clock, not the entry's.
	mustAccept(t, s.applyAt(late, cmdTransfers(xfer("fund", "bank", "a", 10))))
	mustAccept(t, s.applyAt(testT0, cmdTransfers(pendingXfer("p", "a", "b", 10, 10))))
	if got := s.readTransfer("p").GetCreatedAt().AsTime().UnixNano(); got != late {
		t.Fatalf("p created at %d, want %d", got, late)
	}
	r := s.applyAt(late+5*int64(time.Second), cmdTransfers(postXfer("q", "p", "a", 0)))
	mustAccept(t, r)
	if st := r.GetTransfers()[0].GetStatus(); st != stCreated {
		t.Fatalf("post 5s after the pending: %v (expired against the entry's own older clock?)", st)
	}
	// Shard state reports the clock.
	a, err := NewApplier(s.store)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.State().GetLastTimestampUnixNano(); got != late+5*int64(time.Second) {
		t.Fatalf("last timestamp %d", got)
	}
}

// eventLog reads a shard's stored event log: key (first seq) -> the batch's events.
func (s *testShard) eventLog() (firsts []uint64, batches [][]*raftv1.Event) {
	s.t.Helper()
	if err := s.store.Scan([]byte{prefixEvent}, func(k, v []byte) error {
		b := &raftv1.EventBatch{}
		if err := proto.Unmarshal(v, b); err != nil {
			return err
		}
		firsts = append(firsts, binary.BigEndian.Uint64(k[1:]))
		batches = append(batches, b.GetEvents())
		return nil
	}); err != nil {
		s.t.Fatal(err)
	}
	return firsts, batches
}

// TestEventLog checks how events are stored: one key per raft entry (every command of
// the entry), under its first event's sequence number, sequence numbers contiguous across
// keys; a failed linked chain leaves no event and no gap; a refused command none; a lone
// Apply stores its own events.
func TestEventLog(t *testing.T) {
	s := newFixtureShard(t)
	firsts, _ := s.eventLog()
	st, err := LoadShardState(s.store)
	if err != nil {
		t.Fatal(err)
	}
	seq0 := st.GetEventSeq()
	if seq0 == 0 || len(firsts) == 0 {
		t.Fatalf("fixture: event seq %d, %d stored batches", seq0, len(firsts))
	}

	// One entry: accounts, a chain whose second link fails, a refused command (malformed),
	// a plain transfer.
	entry := &raftv1.Batch{Commands: []*raftv1.Command{
		cmdAccounts(acct("evt-1"), acct("evt-2")),
		cmdTransfers(linked(xfer("ch1", "alice", "bob", 10)), xfer("ch2", "alice", "ghost", 10)),
		cmdTransfers(linked(xfer("open", "alice", "bob", 1))),
		cmdTransfers(xfer("plain", "alice", "bob", 5)),
	}}
	s.now += int64(time.Millisecond)
	for _, c := range entry.Commands {
		c.TimestampUnixNano = s.now
	}
	a, err := NewApplier(s.store)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.ApplyBatch(entry)
	if err != nil {
		t.Fatal(err)
	}
	if res.Results[2].GetRefusal() != raftv1.Refusal_REFUSAL_MALFORMED {
		t.Fatalf("open chain: %v, want refused as malformed", res.Results[2])
	}
	s.store.Commit(a.Overlay())

	firsts, batches := s.eventLog()
	last := len(firsts) - 1
	if firsts[last] != seq0+1 {
		t.Fatalf("the entry's events are stored under %d, want %d", firsts[last], seq0+1)
	}
	wantKinds := []raftv1.EventKind{raftv1.EventKind_EVENT_KIND_ACCOUNT_CREATED, raftv1.EventKind_EVENT_KIND_ACCOUNT_CREATED,
		raftv1.EventKind_EVENT_KIND_TRANSFER_POSTED}
	got := batches[last]
	if len(got) != len(wantKinds) {
		t.Fatalf("the entry stored %d events, want %d: %v", len(got), len(wantKinds), got)
	}
	for i, e := range got {
		if e.GetKind() != wantKinds[i] || e.GetSeq() != seq0+1+uint64(i) || e.GetTimestampUnixNano() != s.now {
			t.Fatalf("event %d: %v, want kind %v seq %d at %d", i, e, wantKinds[i], seq0+1+uint64(i), s.now)
		}
	}
	if tr := got[2].GetTransfer(); tr.GetId() != "plain" {
		t.Fatalf("posted event is for %q, want plain", tr.GetId())
	}
	// Contiguous across every stored batch.
	want := firsts[0]
	for i, b := range batches {
		if firsts[i] != want || len(b) == 0 {
			t.Fatalf("batch %d: key %d with %d events, want key %d", i, firsts[i], len(b), want)
		}
		for _, e := range b {
			if e.GetSeq() != want {
				t.Fatalf("batch %d holds seq %d, want %d", i, e.GetSeq(), want)
			}
			want++
		}
	}
	if st, err := LoadShardState(s.store); err != nil || st.GetEventSeq() != want-1 {
		t.Fatalf("shard event seq %d (%v), want %d", st.GetEventSeq(), err, want-1)
	}

	// A lone Apply (no entry around it) stores its own events; one with none stores nothing.
	s.mustTransfer(xfer("lone", "alice", "bob", 1))
	s.transfers(xfer("lone", "alice", "bob", 1)) // EXISTS: no event
	firsts2, batches2 := s.eventLog()
	if len(firsts2) != len(firsts)+1 || firsts2[len(firsts2)-1] != want || len(batches2[len(batches2)-1]) != 1 {
		t.Fatalf("after a lone transfer and its retry: keys %v, want one more at %d with one event", firsts2, want)
	}
}

package ledger

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Property test: random command sequences on a shard owning every slot. After every
// command the invariants of DESIGN.md section 7 hold; every transfer id and every branch
// keeps one outcome; replaying the same commands batched differently gives the same
// results, the same state and the same event sequence (only the event log's storage keys,
// one per raft entry, follow the batching), and the same batching gives the same state hash.

const (
	propCommands = 2000
	propChunk    = 7 // commands per raft entry in the replay
)

var propSeeds = []uint64{1, 2, 3, 0xdecaf, 0x5eed}

func TestPropertyRandomCommands(t *testing.T) {
	for _, seed := range propSeeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Parallel()
			m := newPropModel(t, seed)
			for m.steps < propCommands {
				m.step()
			}
			m.quiesce()
			m.checkReplay()
			t.Logf("%d commands, %d accounts, %d pending transfers open; transfer answers %v; branch votes %v", len(m.cmds), len(m.accounts), len(m.live), m.seenStatus, m.seenVotes)
		})
	}
}

type propAccount struct {
	id       string
	currency string
}

// propFirst is the first answer an id got and the fields it was sent with.
type propFirst struct {
	t      *ledgerv1.Transfer
	status ledgerv1.TransferStatus
}

type propBranchKey struct {
	txn   string
	index uint32
}

// propBranch is the test's model of one branch record on the shard.
type propBranch struct {
	b     *raftv1.Branch
	state raftv1.BranchState // UNSPECIFIED: no record
}

// propTxn is a cross-shard transaction whose two branches both live on this shard,
// driven by a coordinator that follows the protocol: commit only when both prepared.
type propTxn struct {
	id       string
	branches [2]*raftv1.Branch
	decision int // 0 undecided, 1 commit, 2 abort
}

type propModel struct {
	chunkHash []byte // state hash of the replay in propChunk-command entries
	t         *testing.T
	rng       *rand.Rand
	store     *MemStore
	now       int64
	steps     int

	cmds    []*raftv1.Command // every command applied, in order
	results []*raftv1.CommandResult

	accounts    []propAccount
	accountReqs []*ledgerv1.Account // every account sent, for duplicates
	nextID      int

	sent     []*ledgerv1.Transfer // every transfer sent, for duplicates
	first    map[string]propFirst
	pendings []*ledgerv1.Transfer          // every pending transfer sent (targets of posts and voids)
	live     map[string]*ledgerv1.Transfer // pending transfers CREATED and not yet seen resolved

	txns     []*propTxn
	branches map[propBranchKey]*propBranch
	// committed branch amounts per currency: a committed branch moves money on this shard
	// whose other side is elsewhere (here: the other branch of the same txn).
	committedDebits, committedCredits map[string]uint64

	seenStatus map[ledgerv1.TransferStatus]int // how often each answer came (coverage)
	seenVotes  map[raftv1.BranchState]int
}

func newPropModel(t *testing.T, seed uint64) *propModel {
	m := &propModel{
		t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), store: NewMemStore(), now: testT0,
		first: map[string]propFirst{}, live: map[string]*ledgerv1.Transfer{},
		branches:        map[propBranchKey]*propBranch{},
		committedDebits: map[string]uint64{}, committedCredits: map[string]uint64{},
		seenStatus: map[ledgerv1.TransferStatus]int{}, seenVotes: map[raftv1.BranchState]int{},
	}
	m.exec(cmdAssign(testEpoch, testSlotCount, allSlots(testSlotCount)...))
	var accs []*ledgerv1.Account
	for range 12 {
		accs = append(accs, m.newAccount())
	}
	m.exec(cmdAccounts(accs...))
	return m
}

func (m *propModel) id(prefix string) string {
	m.nextID++
	return fmt.Sprintf("%s-%d", prefix, m.nextID)
}

func (m *propModel) chance(p float64) bool { return m.rng.Float64() < p }

// exec applies one command in its own Applier, commits it, checks its results against the
// model and the invariants.
func (m *propModel) exec(c *raftv1.Command) *raftv1.CommandResult {
	m.t.Helper()
	m.steps++
	// The proposer's clock: mostly forward, sometimes behind (another proposer's skew).
	ts := m.now
	switch {
	case m.chance(0.05):
		ts = m.now - int64(m.rng.IntN(10_000))*int64(time.Millisecond)
	default:
		m.now += int64(m.rng.IntN(1500)) * int64(time.Millisecond)
		ts = m.now
	}
	c.TimestampUnixNano = ts
	a, err := NewApplier(m.store)
	if err != nil {
		m.t.Fatalf("step %d: new applier: %v", m.steps, err)
	}
	r, err := a.Apply(c)
	if err != nil {
		m.t.Fatalf("step %d: apply %v: %v", m.steps, c, err)
	}
	m.store.Commit(a.Overlay())
	m.cmds = append(m.cmds, c)
	m.results = append(m.results, r)
	if c.GetAssignSlots() == nil && r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
		m.t.Fatalf("step %d: %v refused: %v %s", m.steps, c, r.GetRefusal(), r.GetMessage())
	}
	switch op := c.GetOp().(type) {
	case *raftv1.Command_CreateAccounts:
		m.checkAccounts(op.CreateAccounts.GetAccounts(), r)
	case *raftv1.Command_CreateTransfers:
		m.checkTransfers(op.CreateTransfers.GetTransfers(), r)
	case *raftv1.Command_Prepare:
		m.checkPrepare(op.Prepare.GetBranches(), r)
	case *raftv1.Command_Resolve:
		m.checkResolve(op.Resolve, r)
	}
	m.checkInvariants(false)
	return r
}

// --- generators ---

func (m *propModel) newAccount() *ledgerv1.Account {
	a := &ledgerv1.Account{Id: m.id("acc"), Currency: "USD"}
	if m.chance(0.3) {
		a.Currency = "EUR"
	}
	switch x := m.rng.Float64(); {
	case x < 0.4:
		a.DebitsMustNotExceedCredits = true
	case x < 0.6:
		a.CreditsMustNotExceedDebits = true
	}
	return a
}

func (m *propModel) randomAccount() propAccount {
	if m.chance(0.02) {
		return propAccount{id: m.id("ghost"), currency: "USD"}
	}
	return m.accounts[m.rng.IntN(len(m.accounts))]
}

// counterpart picks a second account: mostly one in the same currency.
func (m *propModel) counterpart(of propAccount) propAccount {
	for range 8 {
		c := m.randomAccount()
		if c.currency == of.currency || m.chance(0.1) {
			return c
		}
	}
	return m.randomAccount()
}

func (m *propModel) amount() uint64 {
	if m.chance(0.02) {
		return 0
	}
	return 1 + uint64(m.rng.IntN(1000))
}

func (m *propModel) genAccounts() *raftv1.Command {
	var accs []*ledgerv1.Account
	for range 1 + m.rng.IntN(2) {
		switch {
		case len(m.accountReqs) > 0 && m.chance(0.2):
			a := proto.Clone(m.accountReqs[m.rng.IntN(len(m.accountReqs))]).(*ledgerv1.Account)
			if m.chance(0.5) {
				a.UserData = "changed"
			}
			accs = append(accs, a)
		case m.chance(0.03):
			accs = append(accs, &ledgerv1.Account{Id: m.id("bad"), Currency: "usd"})
		default:
			accs = append(accs, m.newAccount())
		}
	}
	return cmdAccounts(accs...)
}

func (m *propModel) genTransfer(cmd []*ledgerv1.Transfer) *ledgerv1.Transfer {
	x := m.rng.Float64()
	switch {
	case x < 0.12 && (len(m.sent) > 0 || len(cmd) > 0):
		// A duplicate of an earlier id (maybe one earlier in this very command), with the
		// same fields or different ones (the debit account, which routes it, stays).
		var src *ledgerv1.Transfer
		if len(cmd) > 0 && (len(m.sent) == 0 || m.chance(0.5)) {
			src = cmd[m.rng.IntN(len(cmd))]
		} else {
			src = m.sent[m.rng.IntN(len(m.sent))]
		}
		d := proto.Clone(src).(*ledgerv1.Transfer)
		d.Linked = false
		if m.chance(0.4) {
			if m.chance(0.5) {
				d.Code++
			} else {
				d.Amount++
			}
		}
		return d
	case x < 0.32 && len(m.pendings) > 0:
		// Post or void a pending transfer (mostly one still open), naming its debit account.
		var p *ledgerv1.Transfer
		if len(m.live) > 0 && m.chance(0.8) {
			p = m.anyLive()
		} else {
			p = m.pendings[m.rng.IntN(len(m.pendings))]
		}
		t := &ledgerv1.Transfer{Id: m.id("res"), DebitAccountId: p.GetDebitAccountId()}
		if m.chance(0.3) {
			t.CreditAccountId = p.GetCreditAccountId()
		}
		if m.chance(0.3) {
			t.Currency = p.GetCurrency()
		}
		if m.chance(0.6) {
			t.PostPendingId = p.GetId()
			switch y := m.rng.Float64(); {
			case y < 0.4:
				// the full amount
			case y < 0.9 && p.GetAmount() > 0:
				t.Amount = 1 + uint64(m.rng.IntN(int(p.GetAmount())))
			default:
				t.Amount = p.GetAmount() + uint64(m.rng.IntN(3))
			}
		} else {
			t.VoidPendingId = p.GetId()
		}
		return t
	case x < 0.35:
		// Void a pending id nobody created.
		t := &ledgerv1.Transfer{Id: m.id("res"), DebitAccountId: m.randomAccount().id, VoidPendingId: m.id("nope")}
		return t
	}
	dr := m.randomAccount()
	if x < 0.55 {
		// Funding: from an account without overdraft protection, in its currency.
		for range 5 {
			if !m.noOverdraft(dr.id) {
				break
			}
			dr = m.randomAccount()
		}
	}
	cr := m.counterpart(dr)
	if m.chance(0.03) {
		cr = dr
	}
	t := &ledgerv1.Transfer{Id: m.id("t"), DebitAccountId: dr.id, CreditAccountId: cr.id, Amount: m.amount(),
		Currency: dr.currency, Code: uint32(m.rng.IntN(3))}
	if m.chance(0.05) {
		t.Currency = "GBP"
	}
	if m.chance(0.35) {
		t.Pending = true
		if m.chance(0.5) {
			t.TimeoutSeconds = 1 + uint32(m.rng.IntN(5))
		}
	}
	return t
}

func (m *propModel) noOverdraft(id string) bool {
	for _, a := range m.accountReqs {
		if a.GetId() == id {
			return a.GetDebitsMustNotExceedCredits()
		}
	}
	return false
}

// anyLive picks an open pending transfer (in id order: map order would break the seed).
func (m *propModel) anyLive() *ledgerv1.Transfer {
	ids := make([]string, 0, len(m.live))
	for id := range m.live {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return m.live[ids[m.rng.IntN(len(ids))]]
}

func (m *propModel) genTransfers() *raftv1.Command {
	n := 1 + m.rng.IntN(6)
	ts := make([]*ledgerv1.Transfer, 0, n)
	for i := 0; i < n; i++ {
		t := m.genTransfer(ts)
		if i < n-1 && m.chance(0.45) {
			t.Linked = true
		}
		ts = append(ts, t)
	}
	return cmdTransfers(ts...)
}

// genTxnOp drives one cross-shard transaction a step, like a coordinator would (with
// repeats and late messages), or starts a new one.
func (m *propModel) genTxnOp() *raftv1.Command {
	open := make([]*propTxn, 0, len(m.txns))
	for _, x := range m.txns {
		if !m.txnDone(x) {
			open = append(open, x)
		}
	}
	if len(open) == 0 || m.chance(0.25) {
		dr := m.randomAccount()
		cr := m.counterpart(dr)
		x := &propTxn{id: m.id("txn")}
		amt := m.amount()
		x.branches[0] = &raftv1.Branch{TxnId: x.id, Index: 0, AccountId: dr.id, Debit: true, Amount: amt, Currency: dr.currency}
		x.branches[1] = &raftv1.Branch{TxnId: x.id, Index: 1, AccountId: cr.id, Amount: amt, Currency: dr.currency}
		m.txns = append(m.txns, x)
		if m.chance(0.05) {
			// The coordinator gave up before any prepare arrived: abort first.
			x.decision = 2
			return cmdResolve(false, m.refs(x, m.chance(0.5))...)
		}
		return cmdPrepare(m.pick(x.branches[:])...)
	}
	x := open[m.rng.IntN(len(open))]
	if x.decision == 0 {
		switch {
		case m.chance(0.3):
			// Prepare (again, or the branch not yet prepared).
			return cmdPrepare(m.pick(x.branches[:])...)
		default:
			x.decision = 2
			if m.branchState(x.branches[0]) == brPrepared && m.branchState(x.branches[1]) == brPrepared && m.chance(0.75) {
				x.decision = 1
			}
		}
	}
	if x.decision == 2 && m.chance(0.1) {
		return cmdPrepare(m.pick(x.branches[:])...) // a late prepare after the abort decision
	}
	return cmdResolve(x.decision == 1, m.refs(x, false)...)
}

func (m *propModel) pick(bs []*raftv1.Branch) []*raftv1.Branch {
	switch m.rng.IntN(3) {
	case 0:
		return []*raftv1.Branch{proto.Clone(bs[0]).(*raftv1.Branch)}
	case 1:
		return []*raftv1.Branch{proto.Clone(bs[1]).(*raftv1.Branch)}
	}
	return []*raftv1.Branch{proto.Clone(bs[0]).(*raftv1.Branch), proto.Clone(bs[1]).(*raftv1.Branch)}
}

func (m *propModel) refs(x *propTxn, one bool) []*raftv1.BranchRef {
	var out []*raftv1.BranchRef
	for _, b := range m.pick(x.branches[:]) {
		out = append(out, &raftv1.BranchRef{TxnId: b.TxnId, Index: b.Index, AccountId: b.AccountId})
		if one {
			break
		}
	}
	return out
}

func (m *propModel) branchState(b *raftv1.Branch) raftv1.BranchState {
	if r := m.branches[propBranchKey{b.TxnId, b.Index}]; r != nil {
		return r.state
	}
	return raftv1.BranchState_BRANCH_STATE_UNSPECIFIED
}

// txnDone: decided and every branch resolved the decided way (or refused and aborted).
func (m *propModel) txnDone(x *propTxn) bool {
	if x.decision == 0 {
		return false
	}
	want := brAborted
	if x.decision == 1 {
		want = brCommitted
	}
	return m.branchState(x.branches[0]) == want && m.branchState(x.branches[1]) == want
}

func (m *propModel) step() {
	switch x := m.rng.Float64(); {
	case x < 0.02:
		m.exec(m.genAccounts())
	case x < 0.65:
		m.exec(m.genTransfers())
	case x < 0.97:
		m.exec(m.genTxnOp())
	case x < 0.98:
		// A stale slot assignment: ignored.
		m.exec(cmdAssign(testEpoch, testSlotCount, 0))
	default:
		// An abort of a transaction this shard never heard of, then a late prepare of it.
		tx := m.id("lost")
		acc := m.randomAccount()
		b := &raftv1.Branch{TxnId: tx, Index: 0, AccountId: acc.id, Debit: true, Amount: 1, Currency: acc.currency}
		m.exec(cmdResolve(false, &raftv1.BranchRef{TxnId: tx, AccountId: acc.id}))
		m.exec(cmdPrepare(b))
	}
}

// quiesce drives every transaction to its end, then checks the invariants at rest.
func (m *propModel) quiesce() {
	for _, x := range m.txns {
		if x.decision == 0 {
			x.decision = 2
			if m.branchState(x.branches[0]) == brPrepared && m.branchState(x.branches[1]) == brPrepared {
				x.decision = 1
			}
		}
		for !m.txnDone(x) {
			refs := []*raftv1.BranchRef{
				{TxnId: x.id, Index: 0, AccountId: x.branches[0].AccountId},
				{TxnId: x.id, Index: 1, AccountId: x.branches[1].AccountId},
			}
			m.exec(cmdResolve(x.decision == 1, refs...))
			if x.decision == 1 && !m.txnDone(x) {
				m.t.Fatalf("txn %s: commit of two prepared branches did not commit both", x.id)
			}
		}
	}
	m.checkInvariants(true)
}

// --- checks of each result ---

func (m *propModel) checkAccounts(in []*ledgerv1.Account, r *raftv1.CommandResult) {
	m.t.Helper()
	if len(r.GetAccounts()) != len(in) {
		m.t.Fatalf("step %d: %d results for %d accounts", m.steps, len(r.GetAccounts()), len(in))
	}
	for i, a := range in {
		got := r.GetAccounts()[i].GetStatus()
		want := ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED
		if invalidAccount(a) != "" {
			want = ledgerv1.AccountStatus_ACCOUNT_STATUS_INVALID
		} else {
			for _, old := range m.accountReqs {
				if old.GetId() == a.GetId() && invalidAccount(old) == "" {
					want = ledgerv1.AccountStatus_ACCOUNT_STATUS_ID_REUSED
					if sameAccountFields(old, a) {
						want = ledgerv1.AccountStatus_ACCOUNT_STATUS_EXISTS
					}
					break
				}
			}
		}
		if got != want {
			m.t.Fatalf("step %d: account %q: %v, want %v", m.steps, a.GetId(), got, want)
		}
		if want == ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED {
			m.accounts = append(m.accounts, propAccount{id: a.GetId(), currency: a.GetCurrency()})
		}
		m.accountReqs = append(m.accountReqs, a)
	}
}

func (m *propModel) checkTransfers(in []*ledgerv1.Transfer, r *raftv1.CommandResult) {
	m.t.Helper()
	if len(r.GetTransfers()) != len(in) {
		m.t.Fatalf("step %d: %d results for %d transfers", m.steps, len(r.GetTransfers()), len(in))
	}
	for i, t := range in {
		res := r.GetTransfers()[i]
		if res.GetId() != t.GetId() {
			m.t.Fatalf("step %d: result %d for %q, want %q", m.steps, i, res.GetId(), t.GetId())
		}
		got := res.GetStatus()
		m.seenStatus[got]++
		f, seen := m.first[t.GetId()]
		switch {
		case !seen:
			if got == stExists || got == stIDReused || got == ledgerv1.TransferStatus_TRANSFER_STATUS_UNSPECIFIED {
				m.t.Fatalf("step %d: new transfer %q answered %v", m.steps, t.GetId(), got)
			}
			m.first[t.GetId()] = propFirst{t: t, status: got}
			if got == stCreated && t.GetPending() {
				m.live[t.GetId()] = t
			}
		case SameTransferFields(f.t, t):
			if want := replayed(f.status); got != want {
				m.t.Fatalf("step %d: transfer %q answered %v, first answer was %v: want %v (one outcome forever)",
					m.steps, t.GetId(), got, f.status, want)
			}
		default:
			if got != stIDReused {
				m.t.Fatalf("step %d: transfer %q with other fields answered %v, want ID_REUSED", m.steps, t.GetId(), got)
			}
		}
		m.sent = append(m.sent, t)
		if !seen && t.GetPending() {
			m.pendings = append(m.pendings, t)
		}
	}
}

func (m *propModel) checkPrepare(in []*raftv1.Branch, r *raftv1.CommandResult) {
	m.t.Helper()
	if len(r.GetVotes()) != len(in) {
		m.t.Fatalf("step %d: %d votes for %d branches", m.steps, len(r.GetVotes()), len(in))
	}
	for i, b := range in {
		v := r.GetVotes()[i]
		m.seenVotes[v.GetState()]++
		k := propBranchKey{b.TxnId, b.Index}
		rec := m.branches[k]
		if v.GetTxnId() != b.TxnId || v.GetIndex() != b.Index {
			m.t.Fatalf("step %d: vote %v for branch %v", m.steps, v, b)
		}
		if rec == nil {
			// A first prepare: prepared, or refused with a reason.
			ok := (v.GetState() == brPrepared && v.GetStatus() == stCreated) ||
				(v.GetState() == brRefused && v.GetStatus() != stCreated && v.GetStatus() != ledgerv1.TransferStatus_TRANSFER_STATUS_UNSPECIFIED)
			if !ok {
				m.t.Fatalf("step %d: first prepare of %v voted %v", m.steps, b, v)
			}
			m.branches[k] = &propBranch{b: b, state: v.GetState()}
			continue
		}
		// A repeated (or late) prepare answers the recorded state.
		if v.GetState() != rec.state {
			m.t.Fatalf("step %d: prepare of %v (recorded %v) voted %v", m.steps, b, rec.state, v)
		}
	}
}

func (m *propModel) checkResolve(in *raftv1.ResolveBranches, r *raftv1.CommandResult) {
	m.t.Helper()
	if len(r.GetVotes()) != len(in.GetBranches()) {
		m.t.Fatalf("step %d: %d votes for %d branches", m.steps, len(r.GetVotes()), len(in.GetBranches()))
	}
	for i, ref := range in.GetBranches() {
		v := r.GetVotes()[i]
		m.seenVotes[v.GetState()]++
		k := propBranchKey{ref.TxnId, ref.Index}
		rec := m.branches[k]
		var from raftv1.BranchState
		if rec != nil {
			from = rec.state
		}
		want := from
		switch {
		case in.GetCommit() && from == brPrepared:
			want = brCommitted
		case !in.GetCommit() && (from == raftv1.BranchState_BRANCH_STATE_UNSPECIFIED || from == brPrepared || from == brRefused):
			want = brAborted
		}
		if v.GetState() != want {
			m.t.Fatalf("step %d: resolve(commit=%v) of %s/%d in state %v voted %v, want %v",
				m.steps, in.GetCommit(), ref.TxnId, ref.Index, from, v, want)
		}
		if want == from {
			continue
		}
		if rec == nil {
			// The tombstone of an abort before prepare.
			m.branches[k] = &propBranch{b: &raftv1.Branch{TxnId: ref.TxnId, Index: ref.Index, AccountId: ref.AccountId}, state: want}
			continue
		}
		rec.state = want
		if want == brCommitted {
			if rec.b.Debit {
				m.committedDebits[rec.b.Currency] += rec.b.Amount
			} else {
				m.committedCredits[rec.b.Currency] += rec.b.Amount
			}
		}
	}
}

// --- invariants (DESIGN.md section 7) ---

func (m *propModel) checkInvariants(atRest bool) {
	m.t.Helper()
	ids := make([]string, len(m.accounts))
	for i, a := range m.accounts {
		ids[i] = a.id
	}
	accs, nf, err := ReadAccounts(m.store, ids)
	if err != nil || len(nf) != 0 || len(accs) != len(ids) {
		m.t.Fatalf("step %d: read accounts: not found %v, err %v", m.steps, nf, err)
	}
	// What the model says is held: open pending transfers and prepared branches.
	heldDebit := map[string]uint64{}
	heldCredit := map[string]uint64{}
	if len(m.live) > 0 {
		liveIDs := make([]string, 0, len(m.live))
		for id := range m.live {
			liveIDs = append(liveIDs, id)
		}
		ts, nf, err := ReadTransfers(m.store, liveIDs)
		if err != nil || len(nf) != 0 {
			m.t.Fatalf("step %d: read pending transfers: not found %v, err %v", m.steps, nf, err)
		}
		for _, t := range ts {
			if t.GetState() != statePending {
				delete(m.live, t.GetId()) // posted, voided and expired are final
				continue
			}
			heldDebit[t.GetDebitAccountId()] += t.GetAmount()
			heldCredit[t.GetCreditAccountId()] += t.GetAmount()
		}
	}
	openBranches := 0
	for _, b := range m.branches {
		if b.state != brPrepared {
			continue
		}
		openBranches++
		if b.b.Debit {
			heldDebit[b.b.AccountId] += b.b.Amount
		} else {
			heldCredit[b.b.AccountId] += b.b.Amount
		}
	}
	type sums struct{ dp, cp, dpend, cpend uint64 }
	per := map[string]*sums{}
	var all sums
	for _, a := range accs {
		s := per[a.GetCurrency()]
		if s == nil {
			s = &sums{}
			per[a.GetCurrency()] = s
		}
		s.dp += a.GetDebitsPosted()
		s.cp += a.GetCreditsPosted()
		s.dpend += a.GetDebitsPending()
		s.cpend += a.GetCreditsPending()
		all.dpend += a.GetDebitsPending()
		all.cpend += a.GetCreditsPending()
		if a.GetDebitsMustNotExceedCredits() && a.GetDebitsPosted()+a.GetDebitsPending() > a.GetCreditsPosted() {
			m.t.Fatalf("step %d: account %q overdrawn: %v", m.steps, a.GetId(), balOf(a))
		}
		if a.GetCreditsMustNotExceedDebits() && a.GetCreditsPosted()+a.GetCreditsPending() > a.GetDebitsPosted() {
			m.t.Fatalf("step %d: account %q credits exceed debits: %v", m.steps, a.GetId(), balOf(a))
		}
		if a.GetDebitsPending() != heldDebit[a.GetId()] || a.GetCreditsPending() != heldCredit[a.GetId()] {
			m.t.Fatalf("step %d: account %q holds %d/%d pending (debit/credit), open pendings and branches hold %d/%d",
				m.steps, a.GetId(), a.GetDebitsPending(), a.GetCreditsPending(), heldDebit[a.GetId()], heldCredit[a.GetId()])
		}
	}
	for cur, s := range per {
		// Σ debits_posted = Σ credits_posted, counting the far side of committed branches.
		if s.dp+m.committedCredits[cur] != s.cp+m.committedDebits[cur] {
			m.t.Fatalf("step %d: %s: debits posted %d (+%d committed credit branches) != credits posted %d (+%d committed debit branches)",
				m.steps, cur, s.dp, m.committedCredits[cur], s.cp, m.committedDebits[cur])
		}
	}
	if atRest {
		if openBranches != 0 {
			m.t.Fatalf("at rest: %d branches still prepared", openBranches)
		}
		for cur, s := range per {
			if m.committedDebits[cur] != m.committedCredits[cur] || s.dp != s.cp {
				m.t.Fatalf("at rest: %s: debits posted %d, credits posted %d; committed branches %d/%d",
					cur, s.dp, s.cp, m.committedDebits[cur], m.committedCredits[cur])
			}
		}
		var held uint64
		for _, v := range heldDebit {
			held += v
		}
		if all.dpend != all.cpend || all.dpend != held {
			m.t.Fatalf("at rest: debits pending %d, credits pending %d, open pending transfers hold %d", all.dpend, all.cpend, held)
		}
	}
}

// --- replay determinism ---

// checkReplay applies the recorded commands to fresh stores, propChunk commands per
// Applier (one raft entry) and all in one, and compares results and states: the state
// hash of the same batching (twice) and, across batchings, every key outside the event
// log plus the event sequence (the event log is stored one key per entry).
func (m *propModel) checkReplay() {
	m.t.Helper()
	want := eventFlatHash(m.t, m.store)
	for _, chunk := range []int{propChunk, propChunk, len(m.cmds)} {
		store := NewMemStore()
		var results []*raftv1.CommandResult
		for i := 0; i < len(m.cmds); i += chunk {
			a, err := NewApplier(store)
			if err != nil {
				m.t.Fatal(err)
			}
			br, err := a.ApplyBatch(&raftv1.Batch{Commands: m.cmds[i:min(i+chunk, len(m.cmds))]})
			if err != nil {
				m.t.Fatalf("replay (%d per entry): %v", chunk, err)
			}
			results = append(results, br.GetResults()...)
			store.Commit(a.Overlay())
		}
		for i := range results {
			if !proto.Equal(results[i], m.results[i]) {
				m.t.Fatalf("replay (%d per entry): command %d answered %v, first run %v", chunk, i, results[i], m.results[i])
			}
		}
		if got := eventFlatHash(m.t, store); !bytes.Equal(got, want) {
			m.t.Fatalf("replay (%d per entry): state (event log flattened) hash %x, first run %x", chunk, got, want)
		}
		if chunk == propChunk {
			if m.chunkHash == nil {
				m.chunkHash = store.Hash()
			} else if got := store.Hash(); !bytes.Equal(got, m.chunkHash) {
				m.t.Fatalf("replay (%d per entry) twice: state hash %x, then %x", chunk, m.chunkHash, got)
			}
		}
	}
}

// eventFlatHash hashes a store's state with its event log flattened: every key outside
// the log as stored, then each event under its own sequence number, whatever batch of
// the log holds it.
func eventFlatHash(t *testing.T, store *MemStore) []byte {
	t.Helper()
	h := NewHasher()
	if err := store.Scan(nil, func(k, v []byte) error {
		if len(k) == 0 || k[0] != prefixEvent {
			h.Add(k, v)
			return nil
		}
		b := &raftv1.EventBatch{}
		if err := proto.Unmarshal(v, b); err != nil {
			return fmt.Errorf("event batch %x: %w", k, err)
		}
		for _, e := range b.GetEvents() {
			h.Add(eventKey(e.GetSeq()), mustMarshal(e))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return h.Sum()
}

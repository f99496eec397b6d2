package coordinator_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shardledger/shardledger/coordinator"
	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Property test of the coordinator state machine: random interleavings of Begin (new,
// retried, reused, malformed), Decide (random decisions and vote sets), Forget, post and
// void (random and reused ids), ExpireTxns, under a proposer clock that sometimes goes
// backwards. Every command is checked against a reference model and against invariants
// observed on the real records alone:
//   - a txn's decision never changes, except HOLD -> COMMIT (a post) or HOLD -> ABORT
//     (a void or expiry);
//   - COMMIT or HOLD is only set by a DecideTxn carrying a yes vote (PREPARED, or
//     COMMITTED) for every branch;
//   - a DecideTxn with forget closes only a commit;
//   - forgotten txns are decided and never reopen; ReadOpen is the model's open set;
//   - every post/void id keeps its first outcome.
// Then the same command log is replayed with other batchings: equal state hashes.

const (
	pmCommands = 3000
	pmSweep    = 97 // compare every record with the model this often
	// pmHashEvery: the state hash is kept this often (a multiple of 5) for the replay.
	pmHashEvery = 25
)

var pmSeeds = []uint64{1, 2, 20260101}

// --- model ---

type pmTxn struct {
	id        string
	transfers []*ledgerv1.Transfer // as the client sent them
	pending   bool
	expiresAt int64
	decision  raftv1.TxnDecision
	pstate    ledgerv1.TransferState
	commitAmt uint64
	status    ledgerv1.TransferStatus
	msg       string
	failedIdx int32
	forgotten bool
	resolved  string
}

type pmOutcome struct {
	t      *ledgerv1.Transfer
	status ledgerv1.TransferStatus
	msg    string // only compared between the machine's own answers
}

type pmModel struct {
	now      int64
	txns     map[string]*pmTxn
	order    []string          // txn ids in begin order
	owner    map[string]string // transfer id -> txn id
	resolved map[string]*pmOutcome
	postIDs  []string // resolved ids in first-use order
}

func newPMModel() *pmModel {
	return &pmModel{txns: map[string]*pmTxn{}, owner: map[string]string{}, resolved: map[string]*pmOutcome{}}
}

// pmExpect is what the model predicts for one command.
type pmExpect struct {
	refused bool
	// Begin: "new", "existed" or "reused".
	begin string
	// ResolvePending: the status.
	status ledgerv1.TransferStatus
	// The txn ids whose records the command may change or answer.
	touched []string
}

func pmValidBegin(b *raftv1.BeginTxn) bool {
	ts := b.GetTransfers()
	if ledger.ValidateID(b.GetTxnId()) != nil || len(ts) == 0 || len(ts) > ledger.BatchItemsMax || ts[0].GetId() != b.GetTxnId() {
		return false
	}
	seen := map[string]bool{}
	for i, t := range ts {
		if ledger.ValidateTransfer(t) != nil || t.GetPostPendingId() != "" || t.GetVoidPendingId() != "" ||
			(t.GetPending() && len(ts) > 1) || (i < len(ts)-1) != t.GetLinked() || seen[t.GetId()] {
			return false
		}
		seen[t.GetId()] = true
	}
	return true
}

func pmSame(a, b []*ledgerv1.Transfer) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].GetId() != b[i].GetId() || !ledger.SameTransferFields(a[i], b[i]) {
			return false
		}
	}
	return true
}

func (m *pmModel) apply(c *raftv1.Command) pmExpect {
	prev := m.now
	m.now = max(m.now, c.GetTimestampUnixNano())
	var e pmExpect
	switch op := c.GetOp().(type) {
	case *raftv1.Command_BeginTxn:
		e = m.begin(op.BeginTxn)
	case *raftv1.Command_DecideTxn:
		e = m.decide(op.DecideTxn)
	case *raftv1.Command_ForgetTxn:
		e = m.forget(op.ForgetTxn.GetTxnId())
	case *raftv1.Command_ResolvePending:
		e = m.resolve(op.ResolvePending.GetTransfer())
	case *raftv1.Command_ExpireTxns:
		for _, id := range op.ExpireTxns.GetTxnIds() {
			if x := m.txns[id]; x != nil {
				m.expire(x)
				e.touched = append(e.touched, id)
			}
		}
	default:
		e.refused = true
	}
	if e.refused {
		m.now = prev
	}
	return e
}

func (m *pmModel) expire(x *pmTxn) bool {
	if x.decision == mtHold && x.expiresAt > 0 && m.now >= x.expiresAt {
		x.decision, x.pstate = mtAbort, mtStateExpired
		return true
	}
	return false
}

func (m *pmModel) begin(b *raftv1.BeginTxn) pmExpect {
	if !pmValidBegin(b) {
		return pmExpect{refused: true}
	}
	id, ts := b.GetTxnId(), b.GetTransfers()
	e := pmExpect{touched: []string{id}}
	for _, t := range ts {
		if o, ok := m.owner[t.GetId()]; (ok && o != id) || m.resolved[t.GetId()] != nil {
			e.begin = "reused"
			return e
		}
	}
	if x := m.txns[id]; x != nil {
		e.begin = "reused"
		if x.transfers == nil || pmSame(x.transfers, ts) { // a tombstone answers any chain
			e.begin = "existed"
		}
		return e
	}
	x := &pmTxn{id: id, failedIdx: -1, pending: ts[0].GetPending()}
	for _, t := range ts {
		x.transfers = append(x.transfers, proto.Clone(t).(*ledgerv1.Transfer))
		m.owner[t.GetId()] = id
	}
	if x.pending && ts[0].GetTimeoutSeconds() > 0 {
		x.expiresAt = m.now + int64(ts[0].GetTimeoutSeconds())*int64(time.Second)
	}
	m.txns[id] = x
	m.order = append(m.order, id)
	e.begin = "new"
	return e
}

// pmAnyNo: a REFUSED or ABORTED vote of this txn for one of its branches.
func pmAnyNo(id string, n int, votes []*raftv1.Vote) bool {
	for _, v := range votes {
		st := v.GetState()
		if v.GetTxnId() == id && int(v.GetIndex()) < 2*n && (st == mtRefused || st == raftv1.BranchState_BRANCH_STATE_ABORTED) {
			return true
		}
	}
	return false
}

// pmAllYes: a yes vote (PREPARED, or COMMITTED: its router posted it before logging the
// decision) of this txn for every branch index.
func pmAllYes(id string, n int, votes []*raftv1.Vote) bool {
	yes := map[uint32]bool{}
	for _, v := range votes {
		if v.GetTxnId() == id && (v.GetState() == mtPrepared || v.GetState() == mtCommittedVote) {
			yes[v.GetIndex()] = true
		}
	}
	for i := range 2 * n {
		if !yes[uint32(i)] {
			return false
		}
	}
	return true
}

func (m *pmModel) decide(d *raftv1.DecideTxn) pmExpect {
	x := m.txns[d.GetTxnId()]
	if d.GetForget() && (d.GetDecision() != mtCommit || len(d.GetTransfers()) > 0) {
		return pmExpect{refused: true} // forget goes only with the commit of a begun txn
	}
	if x == nil {
		// Presumed abort: an abort of a txn nobody began (an inquiry) is a tombstone,
		// closed at once.
		if d.GetDecision() != mtAbort || ledger.ValidateID(d.GetTxnId()) != nil {
			return pmExpect{refused: true}
		}
		x = &pmTxn{id: d.GetTxnId(), decision: mtAbort, forgotten: true, failedIdx: -1, status: d.GetStatus(), msg: d.GetMessage()}
		m.txns[x.id] = x // not in m.order: the generator draws chains from there
		return pmExpect{touched: []string{x.id}}
	}
	if d.GetForget() && x.pending {
		return pmExpect{refused: true} // a two-phase txn is closed by its post or void
	}
	e := pmExpect{touched: []string{x.id}}
	if x.decision != mtNone {
		if d.GetForget() && x.decision == mtCommit {
			x.forgotten = true // a commit that stands is closed
		}
		return e
	}
	switch d.GetDecision() {
	case mtCommit, mtHold:
		if (d.GetDecision() == mtHold) != x.pending || !pmAllYes(x.id, len(x.transfers), d.GetVotes()) {
			return pmExpect{refused: true}
		}
		if x.pending {
			x.pstate = mtStatePending
		}
	case mtAbort:
		if !pmAnyNo(x.id, len(x.transfers), d.GetVotes()) {
			return pmExpect{refused: true} // every branch may be prepared: only a no vote aborts
		}
		x.status, x.msg, x.failedIdx = d.GetStatus(), d.GetMessage(), d.GetFailedIndex()
		if x.failedIdx < -1 || int(x.failedIdx) >= len(x.transfers) {
			x.failedIdx = -1
		}
	default:
		return pmExpect{refused: true}
	}
	x.decision = d.GetDecision()
	if d.GetForget() {
		x.forgotten = true
	}
	return e
}

func (m *pmModel) forget(id string) pmExpect {
	x := m.txns[id]
	if x == nil {
		return pmExpect{refused: true}
	}
	if !x.forgotten && x.decision != mtCommit && x.decision != mtAbort {
		return pmExpect{refused: true}
	}
	x.forgotten = true
	return pmExpect{touched: []string{id}}
}

func (m *pmModel) resolve(t *ledgerv1.Transfer) pmExpect {
	if t == nil || ledger.ValidateTransfer(t) != nil || (t.GetPostPendingId() == "" && t.GetVoidPendingId() == "") {
		return pmExpect{refused: true}
	}
	post := t.GetPostPendingId() != ""
	pid := t.GetPostPendingId() + t.GetVoidPendingId()
	e := pmExpect{}
	if old := m.resolved[t.GetId()]; old != nil {
		switch {
		case !ledger.SameTransferFields(old.t, t):
			e.status = mtIDReused
		case old.status == mtCreated:
			e.status = mtExists
		default:
			e.status = old.status
		}
		return e
	}
	if _, ok := m.owner[t.GetId()]; ok {
		e.status = mtIDReused
		return e
	}
	defer func() {
		m.resolved[t.GetId()] = &pmOutcome{t: proto.Clone(t).(*ledgerv1.Transfer), status: e.status}
		m.postIDs = append(m.postIDs, t.GetId())
	}()
	x := m.txns[pid]
	if x == nil || !x.pending {
		e.status = mtPendingNF
		return e
	}
	e.touched = []string{pid}
	pt := x.transfers[0]
	switch {
	case x.decision == mtNone:
		e.status = mtPendingNF
	case x.decision == mtCommit:
		e.status = mtAlreadyPosted
	case x.decision == mtAbort && x.pstate == mtStateVoided:
		e.status = mtAlreadyVoided
	case x.decision == mtAbort && x.pstate == mtStateExpired:
		e.status = mtExpired
	case x.decision == mtAbort:
		e.status = mtPendingNF
	case m.expire(x):
		e.status = mtExpired
	case (t.GetDebitAccountId() != "" && t.GetDebitAccountId() != pt.GetDebitAccountId()) ||
		(t.GetCreditAccountId() != "" && t.GetCreditAccountId() != pt.GetCreditAccountId()):
		e.status = mtPendingNF
	case t.GetCurrency() != "" && t.GetCurrency() != pt.GetCurrency():
		e.status = mtCurrency
	case post && t.GetAmount() > pt.GetAmount():
		e.status = mtInvalidAmount
	case post:
		x.decision, x.pstate, x.commitAmt, x.resolved = mtCommit, mtStatePosted, pt.GetAmount(), t.GetId()
		if t.GetAmount() > 0 {
			x.commitAmt = t.GetAmount()
		}
		e.status = mtCreated
	default:
		x.decision, x.pstate, x.resolved = mtAbort, mtStateVoided, t.GetId()
		e.status = mtCreated
	}
	return e
}

func (m *pmModel) open() []string {
	var ids []string
	for _, id := range m.order {
		if !m.txns[id].forgotten {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// tookEffect: the txn's transfers are visible and answer CREATED/EXISTS.
func (x *pmTxn) tookEffect() bool {
	return x.decision == mtCommit || x.decision == mtHold || (x.pending && x.pstate != mtStateNone)
}

// --- generator ---

type pmGen struct {
	r        *rand.Rand
	m        *pmModel
	next     int
	proposer int64 // the proposer's clock: mostly forward, sometimes back
}

func (g *pmGen) fresh(prefix string) string {
	g.next++
	return fmt.Sprintf("%s%d", prefix, g.next)
}

func (g *pmGen) chance(p float64) bool { return g.r.Float64() < p }

func (g *pmGen) account() string { return fmt.Sprintf("a%d", g.r.IntN(5)) }

func (g *pmGen) pick(ids []string) string {
	if len(ids) == 0 {
		return "none"
	}
	return ids[g.r.IntN(len(ids))]
}

// txnWhere picks a begun txn satisfying f (any txn when none does).
func (g *pmGen) txnWhere(f func(x *pmTxn) bool) string {
	var ids []string
	for _, id := range g.m.order {
		if f(g.m.txns[id]) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return g.pick(g.m.order)
	}
	return g.pick(ids)
}

func (g *pmGen) transfer(id string) *ledgerv1.Transfer {
	t := &ledgerv1.Transfer{Id: id, DebitAccountId: g.account(), CreditAccountId: g.account(),
		Amount: 1 + g.r.Uint64N(100), Currency: "USD", Code: uint32(g.r.IntN(3))}
	if g.chance(0.1) {
		t.Currency = "EUR"
	}
	return t
}

func (g *pmGen) tick() int64 {
	switch {
	case g.chance(0.1):
		g.proposer -= g.r.Int64N(int64(3 * time.Second))
	case g.chance(0.03):
		g.proposer += int64(5 * time.Second)
	default:
		g.proposer += g.r.Int64N(int64(400 * time.Millisecond))
	}
	return g.proposer
}

func (g *pmGen) command() *raftv1.Command {
	var c *raftv1.Command
	switch p := g.r.Float64(); {
	case p < 0.22:
		c = g.begin()
	case p < 0.50:
		c = g.decide()
	case p < 0.65:
		c = mtForget(g.pickForget())
	case p < 0.92:
		c = mtResolve(g.resolve())
	default:
		c = g.expire()
	}
	c.TimestampUnixNano = g.tick()
	return c
}

func (g *pmGen) begin() *raftv1.Command {
	switch p := g.r.Float64(); {
	case p < 0.25 && len(g.m.order) > 0: // retry as sent
		return mtBegin(mtClientView(g.m.txns[g.pick(g.m.order)].transfers)...)
	case p < 0.33 && len(g.m.order) > 0: // same id, other fields
		ts := mtClientView(g.m.txns[g.pick(g.m.order)].transfers)
		ts[len(ts)-1].Amount++
		return mtBegin(ts...)
	case p < 0.40: // malformed
		ts := mtChain(g.transfer(g.fresh("t")), g.transfer(g.fresh("t")))
		switch g.r.IntN(5) {
		case 0:
			ts[1].Linked = true
		case 1:
			ts[0].Pending = true
		case 2:
			return mtBeginID(g.fresh("t"), ts...)
		case 3:
			ts[1].Id = ts[0].Id
		default:
			ts[1].Currency = "usd"
		}
		return mtBegin(ts...)
	}
	id := g.fresh("t")
	var ts []*ledgerv1.Transfer
	switch p := g.r.Float64(); {
	case p < 0.35: // pending (TCC try)
		t := g.transfer(id)
		t.Pending = true
		if g.chance(0.6) {
			t.TimeoutSeconds = 1 + uint32(g.r.IntN(8))
		}
		ts = []*ledgerv1.Transfer{t}
	case p < 0.6: // chain
		ts = []*ledgerv1.Transfer{g.transfer(id)}
		for range 1 + g.r.IntN(2) {
			ts = append(ts, g.transfer(g.fresh("t")))
		}
	default:
		ts = []*ledgerv1.Transfer{g.transfer(id)}
	}
	if len(ts) > 1 && g.chance(0.1) {
		// A later transfer reuses a known id (a transfer of another txn or a post).
		if g.chance(0.5) && len(g.m.order) > 0 {
			if other := g.m.txns[g.pick(g.m.order)].transfers; len(other) > 0 {
				ts[len(ts)-1].Id = other[g.r.IntN(len(other))].GetId()
			}
		} else {
			ts[len(ts)-1].Id = g.pick(g.m.postIDs)
		}
	}
	return mtBegin(mtChain(ts...)...)
}

func (g *pmGen) votes(x *pmTxn, id string) []*raftv1.Vote {
	n := 1
	if x != nil && len(x.transfers) > 0 {
		n = len(x.transfers)
	}
	var vs []*raftv1.Vote
	for i := range 2 * n {
		vs = append(vs, &raftv1.Vote{TxnId: id, Index: uint32(i), State: mtPrepared})
	}
	switch p := g.r.Float64(); {
	case p < 0.65: // all yes
	case p < 0.75: // one missing
		i := g.r.IntN(len(vs))
		vs = append(vs[:i], vs[i+1:]...)
	case p < 0.85: // one no
		v := vs[g.r.IntN(len(vs))]
		v.State, v.Status = mtRefused, mtInsufficient
	case p < 0.9: // another txn's votes
		for _, v := range vs {
			v.TxnId = id + "x"
		}
	case p < 0.95:
		vs = nil
	case p < 0.98: // one vote in another state
		vs[g.r.IntN(len(vs))].State = raftv1.BranchState_BRANCH_STATE_ABORTED
	default: // one branch committed already (still a yes)
		vs[g.r.IntN(len(vs))].State = mtCommittedVote
	}
	g.r.Shuffle(len(vs), func(i, j int) { vs[i], vs[j] = vs[j], vs[i] })
	if len(vs) > 0 && g.chance(0.2) {
		vs = append(vs, vs[0])
	}
	return vs
}

func (g *pmGen) decide() *raftv1.Command {
	id := g.txnWhere(func(x *pmTxn) bool { return x.decision == mtNone })
	if g.chance(0.15) {
		id = g.pick(g.m.order)
	}
	if g.chance(0.03) {
		id = g.fresh("t")
	}
	x := g.m.txns[id]
	pending := x != nil && x.pending
	var d raftv1.TxnDecision
	switch p := g.r.Float64(); {
	case p < 0.6:
		d = mtCommit
		if pending {
			d = mtHold
		}
	case p < 0.88:
		d = mtAbort
	case p < 0.95:
		d = mtCommit
		if !pending {
			d = mtHold
		}
	default:
		d = raftv1.TxnDecision(g.r.IntN(5) * 2 % 5) // 0, 2, 4, 1, 3: sometimes unknown
	}
	c := mtDecide(id, d, g.votes(x, id)...)
	if d == mtCommit && g.chance(0.25) { // its router committed every branch: decide and close
		c.GetDecideTxn().Forget = true
	}
	if d == mtAbort {
		dt := c.GetDecideTxn()
		dt.Status = ledgerv1.TransferStatus(4 + g.r.IntN(6))
		dt.Message = fmt.Sprintf("m%d", g.r.IntN(10))
		dt.FailedIndex = int32(g.r.IntN(6) - 2)
		switch p := g.r.Float64(); {
		case p < 0.7 && len(dt.Votes) > 0: // the no vote an abort needs
			v := dt.Votes[g.r.IntN(len(dt.Votes))]
			v.State = mtRefused
			if g.chance(0.3) {
				v.State = raftv1.BranchState_BRANCH_STATE_ABORTED
			}
		case p < 0.85:
			dt.Votes = nil
		}
	}
	return c
}

func (g *pmGen) pickForget() string {
	id := g.txnWhere(func(x *pmTxn) bool { return !x.forgotten && x.decision != mtNone })
	if g.chance(0.15) {
		id = g.pick(g.m.order)
	}
	if g.chance(0.03) {
		id = g.fresh("t")
	}
	return id
}

func (g *pmGen) resolve() *ledgerv1.Transfer {
	if len(g.m.postIDs) > 0 && g.chance(0.15) { // an id used before
		old := g.m.resolved[g.pick(g.m.postIDs)].t
		t := proto.Clone(old).(*ledgerv1.Transfer)
		if g.chance(0.4) {
			t.Amount++
		}
		return t
	}
	pid := g.txnWhere(func(x *pmTxn) bool { return x.pending && x.decision == mtHold })
	switch p := g.r.Float64(); {
	case p < 0.15:
		pid = g.txnWhere(func(x *pmTxn) bool { return x.pending })
	case p < 0.22:
		pid = g.pick(g.m.order)
	case p < 0.27:
		pid = g.fresh("t")
	}
	id := g.fresh("q")
	switch p := g.r.Float64(); {
	case p < 0.03:
		id = pid
	case p < 0.06:
		id = g.pick(g.m.order)
	}
	t := &ledgerv1.Transfer{Id: id}
	if g.chance(0.6) {
		t.PostPendingId = pid
	} else {
		t.VoidPendingId = pid
	}
	var pt *ledgerv1.Transfer
	if x := g.m.txns[pid]; x != nil {
		pt = x.transfers[0]
	} else {
		pt = g.transfer(pid)
	}
	switch p := g.r.Float64(); {
	case p < 0.35:
	case p < 0.8:
		t.Amount = 1 + g.r.Uint64N(pt.GetAmount())
	default:
		t.Amount = pt.GetAmount() + 1 + g.r.Uint64N(3)
	}
	switch p := g.r.Float64(); {
	case p < 0.15:
		t.Currency = pt.GetCurrency()
	case p < 0.3: // often enough that every seed reaches a held txn with it
		t.Currency = "JPY"
	}
	switch p := g.r.Float64(); {
	case p < 0.15:
		t.DebitAccountId, t.CreditAccountId = pt.GetDebitAccountId(), pt.GetCreditAccountId()
	case p < 0.22:
		t.DebitAccountId = g.account()
	}
	if g.chance(0.03) { // malformed
		if g.chance(0.5) {
			t.Pending = true
		} else {
			t.PostPendingId, t.VoidPendingId = pid, pid
		}
	}
	return t
}

func (g *pmGen) expire() *raftv1.Command {
	var ids []string
	for range g.r.IntN(5) {
		ids = append(ids, g.txnWhere(func(x *pmTxn) bool { return x.decision == mtHold }))
	}
	if g.chance(0.2) {
		ids = append(ids, g.fresh("t"))
	}
	return mtExpire(ids...)
}

// --- the run ---

// pmObserved is what the checker saw of one txn on the real records.
type pmObserved struct {
	decision  raftv1.TxnDecision
	pstate    ledgerv1.TransferState
	forgotten bool
}

type pmRun struct {
	t        *testing.T
	seed     uint64
	step     int
	c        *mtCoord
	m        *pmModel
	seen     map[string]pmObserved
	outcomes map[string]*pmOutcome // post/void id -> its first answer, from the machine
	log      []*raftv1.Command
	results  []*raftv1.CommandResult
	hashes   map[int][]byte // hash after command i (for i+1 a multiple of 5)
}

func (p *pmRun) fatalf(format string, args ...any) {
	p.t.Helper()
	p.t.Fatalf("seed %d step %d (%v): %s", p.seed, p.step, p.log[len(p.log)-1], fmt.Sprintf(format, args...))
}

// observe checks the invariants on one txn's real record after command cmd.
func (p *pmRun) observe(id string, cmd *raftv1.Command, res *raftv1.CommandResult) {
	p.t.Helper()
	rec := p.c.txn(id)
	if rec == nil {
		if x := p.m.txns[id]; x != nil {
			p.fatalf("txn %s has no record", id)
		}
		return
	}
	x := p.m.txns[id]
	if x == nil {
		p.fatalf("txn %s exists but the model never began it: %v", id, rec)
	}
	// The model's view.
	if rec.Decision != x.decision || rec.PendingState != x.pstate || rec.Forgotten != x.forgotten ||
		rec.CommitAmount != x.commitAmt || rec.ResolvedBy != x.resolved || rec.ExpiresAtUnixNano != x.expiresAt ||
		rec.FailedIndex != x.failedIdx || rec.Status != x.status || rec.Message != x.msg ||
		!pmSame(rec.Transfers, x.transfers) || len(rec.Branches) != 2*len(x.transfers) {
		p.fatalf("txn %s: record %v, model %+v", id, rec, *x)
	}
	// Invariants on the records alone.
	old, known := p.seen[id]
	now := pmObserved{rec.Decision, rec.PendingState, rec.Forgotten}
	if known && old != now {
		switch {
		case old.forgotten:
			p.fatalf("forgotten txn %s changed: %+v -> %+v", id, old, now)
		case old.decision == now.decision && old.pstate == now.pstate: // forgotten now
		case old.decision == mtNone:
		case old.decision == mtHold && now.decision == mtCommit && now.pstate == mtStatePosted:
		case old.decision == mtHold && now.decision == mtAbort && (now.pstate == mtStateVoided || now.pstate == mtStateExpired):
		default:
			p.fatalf("txn %s: decision %v/%v became %v/%v", id, old.decision, old.pstate, now.decision, now.pstate)
		}
	}
	if now.forgotten && now.decision != mtCommit && now.decision != mtAbort {
		p.fatalf("txn %s forgotten while %v", id, now.decision)
	}
	if d := cmd.GetDecideTxn(); d != nil && d.GetTxnId() == id && now.forgotten && known && !old.forgotten {
		// Closed by a decision: only a commit carrying forget closes a begun record.
		if !d.GetForget() || now.decision != mtCommit {
			p.fatalf("txn %s closed by %v", id, d)
		}
	}
	if (now.decision == mtCommit || now.decision == mtHold) && (!known || old.decision == mtNone) {
		// Set by this command: it must be the DecideTxn of this txn with a yes vote for
		// every branch.
		d := cmd.GetDecideTxn()
		if d == nil || d.GetTxnId() != id || d.GetDecision() != now.decision {
			p.fatalf("txn %s became %v by %v", id, now.decision, cmd)
		}
		yes := map[uint32]bool{}
		for _, v := range d.GetVotes() {
			if v.GetTxnId() == id && (v.GetState() == mtPrepared || v.GetState() == mtCommittedVote) {
				yes[v.GetIndex()] = true
			}
		}
		for _, b := range rec.Branches {
			if !yes[b.Index] {
				p.fatalf("txn %s became %v without a yes vote for branch %d", id, now.decision, b.Index)
			}
		}
		if len(rec.Branches) != 2*len(rec.Transfers) {
			p.fatalf("txn %s has %d branches for %d transfers", id, len(rec.Branches), len(rec.Transfers))
		}
	}
	if known && old.decision == mtHold && now.decision != mtHold {
		// Only a post/void of this txn or an expiry moves a held txn.
		switch {
		case cmd.GetResolvePending() != nil:
			t := cmd.GetResolvePending().GetTransfer()
			if t.GetPostPendingId()+t.GetVoidPendingId() != id {
				p.fatalf("txn %s moved by a resolve of another txn", id)
			}
			if now.pstate == mtStatePosted && (t.GetPostPendingId() == "" || res.Transfers[0].Status != mtCreated) {
				p.fatalf("txn %s posted by %v (%v)", id, t, res)
			}
			if now.pstate == mtStateVoided && (t.GetVoidPendingId() == "" || res.Transfers[0].Status != mtCreated) {
				p.fatalf("txn %s voided by %v (%v)", id, t, res)
			}
		case cmd.GetExpireTxns() != nil:
			if now.pstate != mtStateExpired || !slices.Contains(cmd.GetExpireTxns().GetTxnIds(), id) {
				p.fatalf("txn %s moved to %v by %v", id, now.pstate, cmd)
			}
		default:
			p.fatalf("txn %s moved from HOLD by %v", id, cmd)
		}
		if now.pstate == mtStateExpired && (rec.ExpiresAtUnixNano == 0 || p.m.now < rec.ExpiresAtUnixNano) {
			p.fatalf("txn %s expired early", id)
		}
	}
	p.seen[id] = now
}

func (p *pmRun) check(cmd *raftv1.Command, e pmExpect, res *raftv1.CommandResult) {
	p.t.Helper()
	refused := res.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED
	if refused != e.refused {
		p.fatalf("refused %v (%s), model says %v", refused, res.GetMessage(), e.refused)
	}
	if refused {
		if res.GetRefusal() != mtMalformed || res.GetTxn() != nil || len(res.GetTransfers()) != 0 {
			p.fatalf("refusal %v", res)
		}
		return
	}
	switch op := cmd.GetOp().(type) {
	case *raftv1.Command_BeginTxn:
		ts := op.BeginTxn.GetTransfers()
		switch e.begin {
		case "new", "existed":
			if res.GetTxn().GetTxnId() != op.BeginTxn.GetTxnId() || res.GetExisted() != (e.begin == "existed") || len(res.GetTransfers()) != 0 {
				p.fatalf("begin: %v, model says %s", res, e.begin)
			}
			// A retry answers the recorded outcome.
			x := p.m.txns[op.BeginTxn.GetTxnId()]
			out := coordinator.Outcome(res.Txn, res.Existed)
			if x.decision == mtNone {
				if out != nil {
					p.fatalf("undecided outcome %v", out)
				}
				break
			}
			for i, r := range out {
				want := x.status
				switch {
				case x.tookEffect():
					want = mtExists
				case x.failedIdx >= 0 && int(x.failedIdx) != i:
					want = mtLinkedFailed
				}
				if r.GetId() != ts[i].GetId() || r.GetStatus() != want {
					p.fatalf("outcome %d: %v, want %v", i, r, want)
				}
			}
		default:
			if res.GetTxn() != nil || len(res.GetTransfers()) != len(ts) {
				p.fatalf("begin: %v, model says reused", res)
			}
			for i, r := range res.Transfers {
				if r.GetId() != ts[i].GetId() || r.GetStatus() != mtIDReused {
					p.fatalf("begin result %d: %v, want ID_REUSED", i, r)
				}
			}
		}
	case *raftv1.Command_DecideTxn, *raftv1.Command_ForgetTxn:
		if res.GetTxn().GetTxnId() != e.touched[0] {
			p.fatalf("result %v", res)
		}
	case *raftv1.Command_ResolvePending:
		t := op.ResolvePending.GetTransfer()
		if len(res.GetTransfers()) != 1 || res.Transfers[0].GetId() != t.GetId() {
			p.fatalf("resolve result %v", res)
		}
		r := res.Transfers[0]
		if r.Status != e.status {
			p.fatalf("resolve %v: %v (%s), model says %v", t, r.Status, r.Message, e.status)
		}
		// One outcome per id, forever, from the machine's own answers.
		first := p.outcomes[t.GetId()]
		switch {
		case first == nil && r.Status != mtIDReused:
			if r.Status == mtExists {
				p.fatalf("first answer for %s is EXISTS", t.GetId())
			}
			p.outcomes[t.GetId()] = &pmOutcome{t: proto.Clone(t).(*ledgerv1.Transfer), status: r.Status, msg: r.Message}
		case first == nil:
		case !ledger.SameTransferFields(first.t, t):
			if r.Status != mtIDReused {
				p.fatalf("%s reused with other fields: %v", t.GetId(), r)
			}
		case first.status == mtCreated:
			if r.Status != mtExists {
				p.fatalf("%s retried: %v, first CREATED", t.GetId(), r)
			}
		default:
			if r.Status != first.status || r.Message != first.msg {
				p.fatalf("%s retried: %v, first %v %q", t.GetId(), r, first.status, first.msg)
			}
		}
	}
}

func (p *pmRun) checkOpen() {
	p.t.Helper()
	got := p.c.openIDs()
	if want := p.m.open(); !slices.Equal(got, want) {
		p.fatalf("open %v, model %v", got, want)
	}
	if n := p.c.openCount(); n != uint64(len(got)) {
		p.fatalf("open count %d, %d open", n, len(got))
	}
	if clock := p.c.clock(); clock != p.m.now {
		p.fatalf("clock %d, model %d", clock, p.m.now)
	}
}

// checkReads: every transfer is found iff it took effect; every post/void iff it succeeded.
func (p *pmRun) checkReads() {
	p.t.Helper()
	var ids []string
	want := map[string]bool{}
	for _, id := range p.m.order {
		x := p.m.txns[id]
		for _, t := range x.transfers {
			ids = append(ids, t.GetId())
			want[t.GetId()] = x.tookEffect()
		}
	}
	for _, id := range p.m.postIDs {
		ids = append(ids, id)
		want[id] = p.m.resolved[id].status == mtCreated
	}
	found, nf := p.c.read(ids...)
	for _, id := range ids {
		if (found[id] != nil) != want[id] {
			p.fatalf("read %s: found %v, want found=%v", id, found[id], want[id])
		}
	}
	if len(found)+len(nf) != len(ids) {
		p.fatalf("read: %d found, %d not found of %d", len(found), len(nf), len(ids))
	}
	for _, id := range p.m.order {
		x := p.m.txns[id]
		if !x.pending || !x.tookEffect() {
			continue
		}
		if got := found[id]; got.State != x.pstate {
			p.fatalf("read %s: state %v, model %v", id, got.State, x.pstate)
		}
	}
}

func TestPropertyRandomInterleavings(t *testing.T) {
	for _, seed := range pmSeeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			p := &pmRun{t: t, seed: seed, c: newMTCoord(t), m: newPMModel(), seen: map[string]pmObserved{},
				outcomes: map[string]*pmOutcome{}, hashes: map[int][]byte{}}
			p.m.now = p.c.clock()
			g := &pmGen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), m: p.m, proposer: p.m.now}
			stats := map[string]int{}
			for p.step = range pmCommands {
				cmd := g.command()
				p.log = append(p.log, proto.Clone(cmd).(*raftv1.Command))
				e := p.m.apply(cmd)
				res := p.c.applyAt(cmd.TimestampUnixNano, cmd)
				p.results = append(p.results, res)
				p.check(cmd, e, res)
				for _, id := range e.touched {
					p.observe(id, cmd, res)
				}
				p.checkOpen()
				if p.step%pmSweep == 0 {
					for _, id := range p.m.order {
						p.observe(id, cmd, res)
					}
				}
				if (p.step+1)%pmHashEvery == 0 {
					p.hashes[p.step] = p.flatHash(p.c.store)
				}
				stats[pmKind(cmd, res)]++
			}
			for _, id := range p.m.order {
				p.observe(id, p.log[len(p.log)-1], p.results[len(p.results)-1])
			}
			p.checkReads()
			t.Logf("%d txns, %d open at the end; %v", len(p.m.order), len(p.m.open()), stats)
			pmCoverage(t, stats)
			p.replay()
		})
	}
}

// pmKind names what a command did, for the coverage check.
func pmKind(c *raftv1.Command, r *raftv1.CommandResult) string {
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
		return fmt.Sprintf("%T refused", c.GetOp())
	}
	switch op := c.GetOp().(type) {
	case *raftv1.Command_BeginTxn:
		switch {
		case r.GetExisted():
			return "begin existed"
		case r.GetTxn() != nil:
			return "begin new"
		default:
			return "begin reused"
		}
	case *raftv1.Command_DecideTxn:
		if op.DecideTxn.GetForget() && r.GetTxn().GetForgotten() {
			return "decide and close " + r.GetTxn().GetDecision().String()
		}
		return "decide " + r.GetTxn().GetDecision().String()
	case *raftv1.Command_ResolvePending:
		if op.ResolvePending.GetTransfer().GetPostPendingId() != "" {
			return "post " + r.Transfers[0].Status.String()
		}
		return "void " + r.Transfers[0].Status.String()
	case *raftv1.Command_ExpireTxns:
		return "expire"
	}
	return fmt.Sprintf("%T", c.GetOp())
}

// pmCoverage fails when the generator stopped reaching a case (a weak property test).
func pmCoverage(t *testing.T, stats map[string]int) {
	t.Helper()
	for _, k := range []string{
		"begin new", "begin existed", "begin reused", "*raftv1.Command_BeginTxn refused",
		"decide TXN_DECISION_COMMIT", "decide TXN_DECISION_ABORT", "decide TXN_DECISION_HOLD",
		"decide and close TXN_DECISION_COMMIT",
		"*raftv1.Command_DecideTxn refused", "*raftv1.Command_ForgetTxn", "*raftv1.Command_ForgetTxn refused",
		"*raftv1.Command_ResolvePending refused", "expire",
		"post TRANSFER_STATUS_CREATED", "post TRANSFER_STATUS_EXISTS", "post TRANSFER_STATUS_ID_REUSED",
		"post TRANSFER_STATUS_PENDING_NOT_FOUND", "post TRANSFER_STATUS_PENDING_ALREADY_POSTED",
		"post TRANSFER_STATUS_PENDING_ALREADY_VOIDED", "post TRANSFER_STATUS_PENDING_EXPIRED",
		"post TRANSFER_STATUS_INVALID_AMOUNT", "post TRANSFER_STATUS_CURRENCY_MISMATCH",
		"void TRANSFER_STATUS_CREATED", "void TRANSFER_STATUS_EXISTS", "void TRANSFER_STATUS_PENDING_EXPIRED",
		"void TRANSFER_STATUS_PENDING_ALREADY_POSTED",
	} {
		if stats[k] == 0 {
			t.Errorf("the random run never produced %q: %v", k, stats)
		}
	}
}

// replay applies the same log with other batchings: one Applier per 5 commands (twice),
// per random-sized batch, and one for everything; the results and hashes must be equal
// (the state hashed with the open index flattened: coordinator.FlatHash), and the two
// replays of the same entries must leave byte-identical state.
func (p *pmRun) flatHash(s *ledger.MemStore) []byte {
	p.t.Helper()
	h, err := coordinator.FlatHash(s)
	if err != nil {
		p.t.Fatalf("state hash: %v", err)
	}
	return h
}

func (p *pmRun) replay() {
	p.t.Helper()
	want := p.flatHash(p.c.store)
	r := rand.New(rand.NewPCG(p.seed, 7))
	var per5 []byte // the exact state hash of the per5 replay
	for _, mode := range []string{"per5", "per5 again", "random", "one"} {
		store := ledger.NewMemStore()
		// The same first entry as newMTCoord.
		a, err := coordinator.NewApplier(store)
		if err != nil {
			p.t.Fatal(err)
		}
		init := mtExpire()
		init.TimestampUnixNano = mtT0
		if _, err := a.Apply(init); err != nil {
			p.t.Fatal(err)
		}
		store.Commit(a.Overlay())
		for i := 0; i < len(p.log); {
			n := 5 // per5, per5 again
			switch mode {
			case "random":
				n = 1 + r.IntN(20)
			case "one":
				n = len(p.log)
			}
			n = min(n, len(p.log)-i)
			a, err := coordinator.NewApplier(store)
			if err != nil {
				p.t.Fatal(err)
			}
			b := &raftv1.Batch{}
			for _, c := range p.log[i : i+n] {
				b.Commands = append(b.Commands, proto.Clone(c).(*raftv1.Command))
			}
			res, err := a.ApplyBatch(b)
			if err != nil {
				p.t.Fatalf("%s: batch at %d: %v", mode, i, err)
			}
			for k, got := range res.Results {
				if !proto.Equal(got, p.results[i+k]) {
					p.t.Fatalf("seed %d %s: command %d answered %v, first run %v", p.seed, mode, i+k, got, p.results[i+k])
				}
			}
			store.Commit(a.Overlay())
			i += n
			if h, ok := p.hashes[i-1]; ok && mode != "random" && mode != "one" && !bytes.Equal(p.flatHash(store), h) {
				p.t.Fatalf("seed %d %s: hash after command %d differs", p.seed, mode, i-1)
			}
		}
		if got := p.flatHash(store); !bytes.Equal(got, want) {
			p.t.Fatalf("seed %d %s: final hash %x, want %x", p.seed, mode, got, want)
		}
		// The same entries give the same state, byte for byte (the open index included).
		switch mode {
		case "per5":
			per5 = store.Hash()
		case "per5 again":
			if got := store.Hash(); !bytes.Equal(got, per5) {
				p.t.Fatalf("seed %d: the same entries twice: state hash %x, then %x", p.seed, per5, got)
			}
		}
	}
}

// Package coordinator is the cross-shard transaction coordinator: a pure, deterministic
// state machine of transaction records (Begin, conditional Decide, Forget, TCC post/void
// and expiry), its dragonboat adapter, and the driver that runs on the group leader.
package coordinator

import (
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/shardledger/shardledger/internal/wire"
	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Keys.
const (
	prefixState    byte = 'c'
	prefixStatus   byte = 'd' // txn id -> the record's changing fields (see putStatus)
	prefixOpen     byte = 'o' // txn id -> "" while not forgotten
	prefixResolved byte = 'p' // post/void transfer id -> StoredTransfer
	prefixTxn      byte = 'r' // txn id -> TxnRecord as created (see putNew)
	prefixIndex    byte = 't' // transfer id -> txn id
	prefixList     byte = 'l' // open list number -> its transactions' ids (see openLists)
	prefixListOpen byte = 'n' // open list number -> how many of them are open
)

// openLists index the transactions not yet forgotten (the driver recovers them): the
// transactions created by one raft entry are listed together under one number, which
// each record keeps (TxnRecord.open_list), and closing a record counts it off its
// list. The router's finish of a request closes its transactions together, so the index
// costs a write and a delete per entry where one key per transaction took a write and a
// delete each. Records created under the earlier layout (open_list 0) keep their own
// key under prefixOpen until they are closed; readers scan both.
func openLists() ledger.ListIndex { return ledger.ListIndex{List: prefixList, Open: prefixListOpen} }

func key(prefix byte, id string) []byte { return append([]byte{prefix}, id...) }

// IsRecordKey tells whether a stored key holds a transaction record or its status (read
// back by the decision and the forget that follow its Begin: the apply cache keeps them
// on write).
func IsRecordKey(k []byte) bool { return len(k) > 0 && (k[0] == prefixTxn || k[0] == prefixStatus) }

var stateKey = []byte{prefixState}

// MostlyNewKeyPrefixes are the key families whose lookups on the apply path are mostly
// of keys not stored yet: a Begin looks up its transfer ids (index, resolved post/void)
// and its record. A storage adapter may answer those misses from a filter.
// A list's count is stored only while the list is partly closed, and a record's status
// only from its decision on (which looks it up first): mostly absent too.
func MostlyNewKeyPrefixes() []byte {
	return []byte{prefixStatus, prefixListOpen, prefixResolved, prefixTxn, prefixIndex}
}

// RouterDeadlineMax bounds how long after its Begin a transaction's router may keep
// the coordinator's driver from recovering it (BeginTxn.router_deadline_unix_nano): a
// router's clock far ahead cannot hold reservations for longer than this.
const RouterDeadlineMax = 5 * time.Minute

// routerDeadline is the router deadline a record keeps: 0 when none was given or it
// has passed already (at now), at most RouterDeadlineMax after now.
func routerDeadline(deadlineUnixNano, nowUnixNano int64) int64 {
	switch {
	case deadlineUnixNano <= nowUnixNano:
		return 0
	case deadlineUnixNano-nowUnixNano > int64(RouterDeadlineMax):
		return nowUnixNano + int64(RouterDeadlineMax)
	}
	return deadlineUnixNano
}

const (
	decNone   = raftv1.TxnDecision_TXN_DECISION_UNSPECIFIED
	decCommit = raftv1.TxnDecision_TXN_DECISION_COMMIT
	decAbort  = raftv1.TxnDecision_TXN_DECISION_ABORT
	decHold   = raftv1.TxnDecision_TXN_DECISION_HOLD

	refusalMalformed = raftv1.Refusal_REFUSAL_MALFORMED

	stCreated       = ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED
	stExists        = ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS
	stIDReused      = ledgerv1.TransferStatus_TRANSFER_STATUS_ID_REUSED
	stPendingNF     = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_NOT_FOUND
	stAlreadyPosted = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_ALREADY_POSTED
	stAlreadyVoided = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_ALREADY_VOIDED
	stExpired       = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_EXPIRED
	stInvalidAmount = ledgerv1.TransferStatus_TRANSFER_STATUS_INVALID_AMOUNT
	stCurrency      = ledgerv1.TransferStatus_TRANSFER_STATUS_CURRENCY_MISMATCH

	statePending = ledgerv1.TransferState_TRANSFER_STATE_PENDING
	statePosted  = ledgerv1.TransferState_TRANSFER_STATE_POSTED
	stateVoided  = ledgerv1.TransferState_TRANSFER_STATE_VOIDED
	stateExpired = ledgerv1.TransferState_TRANSFER_STATE_EXPIRED
)

// Applier applies coordinator commands to one overlay (one batch of raft entries).
type Applier struct {
	ov    *ledger.Overlay
	state *raftv1.CoordState
	now   int64
	// The open list of the entry being applied (see openLists): its number (0: none
	// yet), the ids of the records it lists, and how many of them closed in the same
	// entry. It is stored when the entry (or a lone Apply) ends.
	openSeq    uint64
	opened     [][]byte
	openClosed int
	inBatch    bool
}

// NewApplier loads the group state through r.
func NewApplier(r ledger.Reader) (*Applier, error) {
	ov := ledger.NewOverlay(r)
	st := &raftv1.CoordState{}
	v, ok, err := ov.Get(stateKey)
	if err != nil {
		return nil, fmt.Errorf("load coordinator state: %w", err)
	}
	if ok {
		if err := wire.Unmarshal(v, st); err != nil {
			return nil, fmt.Errorf("decode coordinator state: %w", err)
		}
	}
	return &Applier{ov: ov, state: st}, nil
}

// Overlay returns every write of the batch, group state included.
func (a *Applier) Overlay() *ledger.Overlay {
	a.ov.Set(stateKey, marshal(a.state))
	return a.ov
}

// State returns the group's bookkeeping.
func (a *Applier) State() *raftv1.CoordState { return a.state }

// ApplyBatch applies every command of an entry in order.
func (a *Applier) ApplyBatch(b *raftv1.Batch) (*raftv1.BatchResult, error) {
	out := &raftv1.BatchResult{Results: make([]*raftv1.CommandResult, 0, len(b.GetCommands()))}
	a.inBatch = true
	defer func() { a.inBatch = false }()
	for i, c := range b.GetCommands() {
		r, err := a.Apply(c)
		if err != nil {
			return nil, fmt.Errorf("command %d: %w", i, err)
		}
		out.Results = append(out.Results, r)
	}
	a.storeOpenList()
	return out, nil
}

// listOpen adds a new record to the entry's open list.
func (a *Applier) listOpen(rec *raftv1.TxnRecord) {
	if a.openSeq == 0 {
		a.state.OpenListSeq++
		a.openSeq = a.state.OpenListSeq
	}
	rec.OpenList = a.openSeq
	a.opened = append(a.opened, []byte(rec.TxnId))
}

// storeOpenList stores the entry's open list, without the records closed already.
func (a *Applier) storeOpenList() {
	if a.openSeq == 0 {
		return
	}
	if a.openClosed < len(a.opened) {
		openLists().Store(a.ov, a.openSeq, a.opened, len(a.opened)-a.openClosed)
	}
	a.openSeq, a.opened, a.openClosed = 0, nil, 0
}

// unlistOpen takes a record being forgotten off its open list.
func (a *Applier) unlistOpen(rec *raftv1.TxnRecord) error {
	switch {
	case rec.OpenList == 0:
		a.ov.Delete(key(prefixOpen, rec.TxnId))
	case rec.OpenList == a.openSeq:
		a.openClosed++ // created by this entry: its list is not stored yet
	default:
		if err := openLists().Close(a.ov, rec.OpenList); err != nil {
			return fmt.Errorf("close txn %q: open %w", rec.TxnId, err)
		}
	}
	return nil
}

func refuse(format string, args ...any) *raftv1.CommandResult {
	return &raftv1.CommandResult{Refusal: refusalMalformed, Message: fmt.Sprintf(format, args...)}
}

// Apply applies one command. Refused commands change nothing (not even the clock).
func (a *Applier) Apply(c *raftv1.Command) (*raftv1.CommandResult, error) {
	last := a.state.LastTimestampUnixNano
	if c.GetTimestampUnixNano() > a.state.LastTimestampUnixNano {
		a.state.LastTimestampUnixNano = c.GetTimestampUnixNano()
	}
	a.now = a.state.LastTimestampUnixNano
	var (
		r   *raftv1.CommandResult
		err error
	)
	switch op := c.GetOp().(type) {
	case *raftv1.Command_BeginTxn:
		r, err = a.begin(op.BeginTxn)
	case *raftv1.Command_DecideTxn:
		r, err = a.decide(op.DecideTxn)
	case *raftv1.Command_ForgetTxn:
		r, err = a.forget(op.ForgetTxn)
	case *raftv1.Command_ResolvePending:
		r, err = a.resolvePending(op.ResolvePending)
	case *raftv1.Command_ExpireTxns:
		r, err = a.expireTxns(op.ExpireTxns)
	default:
		r = refuse("command %T is not for a coordinator group", op)
	}
	if err == nil && r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
		a.state.LastTimestampUnixNano = last
	}
	if err == nil && !a.inBatch {
		a.storeOpenList()
	}
	if t := r.GetTxn(); t != nil {
		// Where the index keeps a record depends on how commands were grouped into
		// entries: not part of any answer (the record is stored already).
		t.OpenList = 0
	}
	return r, err
}

// Branches derives a transaction's branches: the debit then the credit of each transfer.
func Branches(txnID string, ts []*ledgerv1.Transfer) []*raftv1.Branch {
	out := make([]*raftv1.Branch, 0, 2*len(ts))
	for i, t := range ts {
		out = append(out,
			&raftv1.Branch{TxnId: txnID, Index: uint32(2 * i), AccountId: t.DebitAccountId, Debit: true, Amount: t.Amount, Currency: t.Currency},
			&raftv1.Branch{TxnId: txnID, Index: uint32(2*i + 1), AccountId: t.CreditAccountId, Amount: t.Amount, Currency: t.Currency})
	}
	return out
}

// TransferOf is the index of the transfer a branch belongs to.
func TransferOf(branchIndex uint32) int { return int(branchIndex / 2) }

func (a *Applier) getTxn(id string) (*raftv1.TxnRecord, error) {
	return readTxn(a.ov, id)
}

// A record is stored in two parts, so that the commands after its Begin rewrite a few
// bytes instead of its transfers (three record writes per transaction were the largest
// part of the coordinator's writes):
//   - under prefixTxn, the record as created (putNew), never rewritten;
//   - under prefixStatus, the fields that change afterwards (putStatus): the decision
//     and its details, the TCC state, forgotten. Read back over the created record.

// putNew stores a new record without its branches (derived from the transfers on read:
// storing them doubled every record write).
func (a *Applier) putNew(rec *raftv1.TxnRecord) {
	branches := rec.Branches
	rec.Branches = nil
	if rec.Forgotten {
		a.ov.SetCold(key(prefixTxn, rec.TxnId), marshal(rec)) // read again only by a retry
	} else {
		a.ov.Set(key(prefixTxn, rec.TxnId), marshal(rec))
	}
	rec.Branches = branches
}

// putStatus stores the changing fields of a record created earlier.
func (a *Applier) putStatus(rec *raftv1.TxnRecord) {
	st := statusOf(rec)
	if rec.Forgotten {
		// Read again only by a retry: the apply cache may drop both parts.
		a.ov.SetCold(key(prefixStatus, rec.TxnId), marshal(st))
		a.ov.Uncache(key(prefixTxn, rec.TxnId))
	} else {
		a.ov.Set(key(prefixStatus, rec.TxnId), marshal(st))
	}
}

// The transfer index names the transaction of each transfer but the first of its chain:
// the first transfer's id is the transaction's id (checkChain), so the record under it
// names it. Records created before this keep an index entry for their first transfer
// too.

// ownerOf names the transaction holding transfer id: its index entry, or id itself when
// a record with transfers is stored under it (a presumed-abort tombstone holds none).
func ownerOf(r ledger.Reader, id string) (string, bool, error) {
	v, ok, err := r.Get(key(prefixIndex, id))
	if err != nil || ok {
		return string(v), ok, err
	}
	v, ok, err = r.Get(key(prefixTxn, id))
	if err != nil || !ok {
		return "", false, err
	}
	rec, err := decodeTxn(id, v)
	if err != nil || tombstone(rec) {
		return "", false, err
	}
	return id, true, nil
}

func (a *Applier) getResolved(id string) (*raftv1.StoredTransfer, error) {
	v, ok, err := a.ov.Get(key(prefixResolved, id))
	if err != nil || !ok {
		return nil, err
	}
	rec := &raftv1.StoredTransfer{}
	if err := wire.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("decode resolved transfer %q: %w", id, err)
	}
	return rec, nil
}

// checkChain validates a transaction's transfers; a refusal, or nil when they are fit.
func checkChain(txnID string, ts []*ledgerv1.Transfer) *raftv1.CommandResult {
	if err := ledger.ValidateID(txnID); err != nil {
		return refuse("txn_id: %v", err)
	}
	if len(ts) == 0 || len(ts) > ledger.BatchItemsMax {
		return refuse("a transaction has 1-%d transfers, got %d", ledger.BatchItemsMax, len(ts))
	}
	if ts[0].GetId() != txnID {
		return refuse("txn id %q must be its first transfer's id %q", txnID, ts[0].GetId())
	}
	seen := make(map[string]bool, len(ts))
	for i, t := range ts {
		if err := ledger.ValidateTransfer(t); err != nil {
			return refuse("transfer %d: %v", i, err)
		}
		// One id, one transfer: a repeated id would get branches (and money moved) twice.
		if seen[t.GetId()] {
			return refuse("transfer %d: id %q appears twice in the transaction", i, t.GetId())
		}
		seen[t.GetId()] = true
		if t.GetPostPendingId() != "" || t.GetVoidPendingId() != "" {
			return refuse("transfer %d: posts and voids are not begun as transactions", i)
		}
		if t.GetPending() && len(ts) > 1 {
			return refuse("transfer %d: a pending transfer must be alone in its transaction", i)
		}
		if (i < len(ts)-1) != t.GetLinked() {
			return refuse("transfer %d: a transaction is one linked chain", i)
		}
	}
	return nil
}

// idsTaken tells whether a transfer id of the chain already belongs to another
// transaction or to a post/void.
func (a *Applier) idsTaken(txnID string, ts []*ledgerv1.Transfer) (bool, error) {
	for i, t := range ts {
		var owner string
		var ok bool
		var err error
		if i == 0 {
			// Its id is txnID: a record under it is this chain's own or a tombstone
			// (the caller compares), so only an index entry can name another owner.
			v, found, gerr := a.ov.Get(key(prefixIndex, t.GetId()))
			owner, ok, err = string(v), found, gerr
		} else {
			owner, ok, err = ownerOf(a.ov, t.GetId())
		}
		if err != nil {
			return false, err
		}
		res, err := a.getResolved(t.GetId())
		if err != nil {
			return false, err
		}
		if res != nil || (ok && owner != txnID) {
			return true, nil
		}
	}
	return false, nil
}

// admitChain answers a chain that cannot be recorded under txnID (a refusal when
// malformed; ID_REUSED when an id is taken), or nil when it can.
func (a *Applier) admitChain(txnID string, ts []*ledgerv1.Transfer) (*raftv1.CommandResult, error) {
	if r := checkChain(txnID, ts); r != nil {
		return r, nil
	}
	taken, err := a.idsTaken(txnID, ts)
	if err != nil {
		return nil, err
	}
	if taken {
		return reused(ts, nil), nil
	}
	return nil, nil
}

// newRecord returns an undecided record of the chain (not stored yet).
func (a *Applier) newRecord(txnID string, ts []*ledgerv1.Transfer) *raftv1.TxnRecord {
	rec := &raftv1.TxnRecord{TxnId: txnID, FailedIndex: -1, BegunAtUnixNano: a.now,
		Branches: Branches(txnID, ts)}
	for _, t := range ts {
		c := t.CloneVT()
		c.CreatedAt = timestamppb.New(time.Unix(0, a.now).UTC())
		rec.Transfers = append(rec.Transfers, c)
	}
	if t := ts[0]; t.GetPending() && t.GetTimeoutSeconds() > 0 {
		rec.ExpiresAtUnixNano = a.now + int64(t.GetTimeoutSeconds())*int64(time.Second)
	}
	return rec
}

// storeNew writes a new record, its transfer index and its place in the open set.
func (a *Applier) storeNew(rec *raftv1.TxnRecord) {
	for _, t := range rec.Transfers[1:] { // the first one's id is rec.TxnId
		a.ov.Set(key(prefixIndex, t.GetId()), []byte(rec.TxnId))
	}
	a.listOpen(rec)
	a.putNew(rec)
	a.state.OpenCount++
}

// tombstone reports whether a record is a presumed-abort tombstone: an abort logged for
// a transaction the group never saw (no transfers known).
func tombstone(rec *raftv1.TxnRecord) bool { return len(rec.Transfers) == 0 }

func (a *Applier) begin(b *raftv1.BeginTxn) (*raftv1.CommandResult, error) {
	ts := b.GetTransfers()
	if r, err := a.admitChain(b.GetTxnId(), ts); r != nil || err != nil {
		return r, err
	}
	old, err := a.getTxn(b.GetTxnId())
	if err != nil {
		return nil, err
	}
	if old != nil {
		if !tombstone(old) && !sameTransfers(old.Transfers, ts) {
			return reused(ts, nil), nil
		}
		return &raftv1.CommandResult{Txn: old, Existed: true}, nil
	}
	rec := a.newRecord(b.GetTxnId(), ts)
	rec.RouterDeadlineUnixNano = routerDeadline(b.GetRouterDeadlineUnixNano(), a.now)
	a.storeNew(rec)
	return &raftv1.CommandResult{Txn: rec}, nil
}

// reused answers ID_REUSED for every transfer of a chain; rec is the record that holds
// the id (nil when another transaction's transfer holds one of the ids).
func reused(ts []*ledgerv1.Transfer, rec *raftv1.TxnRecord) *raftv1.CommandResult {
	r := &raftv1.CommandResult{Txn: rec}
	for _, t := range ts {
		r.Transfers = append(r.Transfers, &ledgerv1.TransferResult{Id: t.GetId(), Status: stIDReused,
			Message: "a transfer with this id exists with different fields"})
	}
	return r
}

func sameTransfers(a, b []*ledgerv1.Transfer) bool {
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

func (a *Applier) decide(d *raftv1.DecideTxn) (*raftv1.CommandResult, error) {
	if err := ledger.ValidateID(d.GetTxnId()); err != nil {
		return refuse("txn_id: %v", err), nil
	}
	rec, err := a.getTxn(d.GetTxnId())
	if err != nil {
		return nil, err
	}
	ts := d.GetTransfers()
	if d.GetForget() && (d.GetDecision() != decCommit || len(ts) > 0) {
		return refuse("txn %q: forget goes only with the COMMIT of a begun transaction", d.GetTxnId()), nil
	}
	created := false
	switch {
	case rec == nil && len(ts) == 0:
		if d.GetDecision() != decAbort {
			return refuse("unknown txn %q", d.GetTxnId()), nil
		}
		// Presumed abort: a participant asks about a transaction nobody decided. The
		// abort is logged (closed at once: there is nothing to drive), so a decision
		// sent later reads it instead of contradicting what the participant was told.
		// The id may be another transaction's transfer (a chain that reused it had its
		// branches prepared under it): the tombstone lives beside that index entry and
		// changes nothing about it.
		rec = &raftv1.TxnRecord{TxnId: d.GetTxnId(), FailedIndex: -1, BegunAtUnixNano: a.now, Forgotten: true}
		if msg := setAbort(rec, d); msg != "" {
			return refuse("%s", msg), nil
		}
		rec.Decision, rec.DecidedAtUnixNano = decAbort, a.now
		a.putNew(rec)
		return &raftv1.CommandResult{Txn: rec}, nil
	case rec == nil:
		if r, err := a.admitChain(d.GetTxnId(), ts); r != nil || err != nil {
			return r, err
		}
		rec, created = a.newRecord(d.GetTxnId(), ts), true
	case len(ts) > 0 && !tombstone(rec) && !sameTransfers(rec.Transfers, ts):
		return reused(ts, rec), nil
	}
	if d.GetForget() && !tombstone(rec) && rec.Transfers[0].GetPending() {
		// A two-phase transaction is closed by its post or void, through the driver.
		return refuse("txn %q: forget does not go with a pending (two-phase) transaction", rec.TxnId), nil
	}
	if rec.Decision != decNone {
		// Conditional: the first decision stands; the caller reads it in the result. A
		// commit that stands is closed when the proposer says every branch committed.
		if d.GetForget() && rec.Decision == decCommit && !rec.Forgotten {
			if err := a.close(rec); err != nil {
				return nil, err
			}
		}
		return &raftv1.CommandResult{Txn: rec, Existed: len(ts) > 0}, nil
	}
	if msg := a.applyDecision(rec, d); msg != "" {
		return refuse("%s", msg), nil
	}
	switch {
	case created:
		a.storeNew(rec)
	case d.GetForget():
		if err := a.close(rec); err != nil { // the decision and the forget in one write
			return nil, err
		}
	default:
		a.putStatus(rec)
	}
	return &raftv1.CommandResult{Txn: rec}, nil
}

// close forgets a decided record: it leaves the open set (the record stays: a transfer
// id has one outcome forever).
func (a *Applier) close(rec *raftv1.TxnRecord) error {
	if rec.Decision != decCommit && rec.Decision != decAbort {
		return fmt.Errorf("closing txn %q while %s", rec.TxnId, rec.Decision)
	}
	if a.state.OpenCount == 0 {
		return fmt.Errorf("open count underflow forgetting %q", rec.TxnId)
	}
	rec.Forgotten = true
	a.putStatus(rec)
	if err := a.unlistOpen(rec); err != nil {
		return err
	}
	a.state.OpenCount--
	return nil
}

// applyDecision sets an undecided record's decision in memory; a refusal message, or
// "" when the decision fits the record.
func (a *Applier) applyDecision(rec *raftv1.TxnRecord, d *raftv1.DecideTxn) string {
	pending := rec.Transfers[0].GetPending()
	switch d.GetDecision() {
	case decCommit, decHold:
		if (d.GetDecision() == decHold) != pending {
			return fmt.Sprintf("txn %q: %s does not fit a pending=%v transaction", rec.TxnId, d.GetDecision(), pending)
		}
		if msg := allPrepared(rec, d.GetVotes()); msg != "" {
			return fmt.Sprintf("txn %q: %s without a yes vote: %s", rec.TxnId, d.GetDecision(), msg)
		}
		if pending {
			rec.PendingState = statePending
		}
	case decAbort:
		// Parallel commits: a begun transaction whose branches are all prepared is
		// committed (a router may already have said so), so an abort must show a branch
		// that is not and never will be prepared.
		if msg := anyNo(rec, d.GetVotes()); msg != "" {
			return fmt.Sprintf("txn %q: abort without a no vote: %s", rec.TxnId, msg)
		}
		if msg := setAbort(rec, d); msg != "" {
			return msg
		}
	default:
		return fmt.Sprintf("txn %q: no decision given", rec.TxnId)
	}
	rec.Decision = d.GetDecision()
	rec.DecidedAtUnixNano = a.now
	return ""
}

// setAbort records why a transaction aborts. An abort answers a failure, whatever the
// proposer said.
func setAbort(rec *raftv1.TxnRecord, d *raftv1.DecideTxn) string {
	if d.GetDecision() != decAbort {
		return fmt.Sprintf("txn %q: %s is not an abort", rec.TxnId, d.GetDecision())
	}
	rec.Status, rec.Message, rec.FailedIndex = d.GetStatus(), d.GetMessage(), d.GetFailedIndex()
	switch rec.Status {
	case ledgerv1.TransferStatus_TRANSFER_STATUS_UNSPECIFIED, stCreated, stExists:
		rec.Status = ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT
	}
	if rec.FailedIndex < -1 || int(rec.FailedIndex) >= len(rec.Transfers) {
		rec.FailedIndex = -1
	}
	return ""
}

// anyNo checks that votes hold a REFUSED or ABORTED vote for a branch of rec; "" when
// they do.
func anyNo(rec *raftv1.TxnRecord, votes []*raftv1.Vote) string {
	for _, v := range votes {
		st := v.GetState()
		if v.GetTxnId() == rec.TxnId && int(v.GetIndex()) < len(rec.Branches) &&
			(st == raftv1.BranchState_BRANCH_STATE_REFUSED || st == raftv1.BranchState_BRANCH_STATE_ABORTED) {
			return ""
		}
	}
	return fmt.Sprintf("none of %d votes refuses a branch", len(votes))
}

// allPrepared checks that votes hold a yes vote for every branch, "" when they do: a
// PREPARED one, or a COMMITTED one (its router posted the branch after seeing every
// branch prepared, and died before logging the decision; a recovery reads it back).
func allPrepared(rec *raftv1.TxnRecord, votes []*raftv1.Vote) string {
	yes := make(map[uint32]bool, len(votes))
	for _, v := range votes {
		if v.GetTxnId() == rec.TxnId && IsYes(v.GetState()) {
			yes[v.GetIndex()] = true
		}
	}
	for _, b := range rec.Branches {
		if !yes[b.Index] {
			return fmt.Sprintf("branch %d", b.Index)
		}
	}
	return ""
}

func (a *Applier) forget(f *raftv1.ForgetTxn) (*raftv1.CommandResult, error) {
	ids := append([]string{f.GetTxnId()}, f.GetMoreTxnIds()...)
	if len(ids) > ledger.BatchItemsMax {
		return refuse("a forget names 1-%d transactions, got %d", ledger.BatchItemsMax, len(ids)), nil
	}
	// All or none: check every record before changing any. Each record is read once;
	// an id named twice is forgotten once.
	recs := make([]*raftv1.TxnRecord, 0, len(ids))
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		rec, err := a.getTxn(id)
		if err != nil {
			return nil, err
		}
		if rec == nil {
			return refuse("unknown txn %q", id), nil
		}
		if !rec.Forgotten && rec.Decision != decCommit && rec.Decision != decAbort {
			return refuse("txn %q is not decided (%s): it cannot be forgotten", rec.TxnId, rec.Decision), nil
		}
		recs = append(recs, rec)
	}
	first := recs[0]
	for _, rec := range recs {
		if rec.Forgotten {
			continue
		}
		if err := a.close(rec); err != nil {
			return nil, err
		}
	}
	return &raftv1.CommandResult{Txn: first}, nil
}

// resolvePending posts or voids a held transaction (the client's Confirm or Cancel).
func (a *Applier) resolvePending(rp *raftv1.ResolvePending) (*raftv1.CommandResult, error) {
	t := rp.GetTransfer()
	if err := ledger.ValidateTransfer(t); err != nil {
		return refuse("transfer: %v", err), nil
	}
	pid := t.GetPostPendingId()
	post := pid != ""
	if !post {
		pid = t.GetVoidPendingId()
	}
	if pid == "" {
		return refuse("transfer %q is neither a post nor a void", t.GetId()), nil
	}
	answer := func(s ledgerv1.TransferStatus, msg string, rec *raftv1.TxnRecord) *raftv1.CommandResult {
		return &raftv1.CommandResult{Txn: rec, Transfers: []*ledgerv1.TransferResult{{Id: t.GetId(), Status: s, Message: msg}}}
	}
	if old, err := a.getResolved(t.GetId()); err != nil || old != nil {
		if err != nil {
			return nil, err
		}
		switch {
		case !ledger.SameTransferFields(old.Transfer, t):
			return answer(stIDReused, "a transfer with this id exists with different fields", nil), nil
		case old.Status == stCreated:
			return answer(stExists, "", nil), nil
		default:
			return answer(old.Status, old.Message, nil), nil
		}
	}
	if _, ok, err := ownerOf(a.ov, t.GetId()); err != nil || ok {
		if err != nil {
			return nil, err
		}
		return answer(stIDReused, "a transfer with this id exists with different fields", nil), nil
	}
	// Every outcome from here on is stored: one outcome per id, forever.
	fail := func(s ledgerv1.TransferStatus, msg string, rec *raftv1.TxnRecord) *raftv1.CommandResult {
		a.ov.Set(key(prefixResolved, t.GetId()), marshal(&raftv1.StoredTransfer{Transfer: t, Status: s, Message: msg}))
		return answer(s, msg, rec)
	}
	rec, err := a.getTxn(pid)
	if err != nil {
		return nil, err
	}
	if rec == nil || tombstone(rec) || !rec.Transfers[0].GetPending() || rec.Transfers[0].GetId() != pid {
		return fail(stPendingNF, fmt.Sprintf("pending transfer %q not found", pid), nil), nil
	}
	pt := rec.Transfers[0]
	switch {
	case rec.Decision == decNone:
		return fail(stPendingNF, fmt.Sprintf("pending transfer %q is still being prepared", pid), rec), nil
	case rec.Decision == decCommit:
		return fail(stAlreadyPosted, fmt.Sprintf("pending transfer %q was already posted", pid), rec), nil
	case rec.Decision == decAbort && rec.PendingState == stateVoided:
		return fail(stAlreadyVoided, fmt.Sprintf("pending transfer %q was already voided", pid), rec), nil
	case rec.Decision == decAbort && rec.PendingState == stateExpired:
		return fail(stExpired, fmt.Sprintf("pending transfer %q expired", pid), rec), nil
	case rec.Decision == decAbort:
		return fail(stPendingNF, fmt.Sprintf("pending transfer %q failed (%s)", pid, rec.Status), rec), nil
	}
	if expired(rec, a.now) {
		a.expireTxn(rec)
		return fail(stExpired, fmt.Sprintf("pending transfer %q expired", pid), rec), nil
	}
	if (t.GetDebitAccountId() != "" && t.GetDebitAccountId() != pt.DebitAccountId) ||
		(t.GetCreditAccountId() != "" && t.GetCreditAccountId() != pt.CreditAccountId) {
		return fail(stPendingNF, fmt.Sprintf("pending transfer %q moves %s -> %s", pid, pt.DebitAccountId, pt.CreditAccountId), nil), nil
	}
	if t.GetCurrency() != "" && t.GetCurrency() != pt.Currency {
		return fail(stCurrency, fmt.Sprintf("pending transfer %q is in %s", pid, pt.Currency), nil), nil
	}
	amount := pt.Amount
	if post {
		if t.GetAmount() > pt.Amount {
			return fail(stInvalidAmount, fmt.Sprintf("amount %d exceeds the pending amount %d", t.GetAmount(), pt.Amount), nil), nil
		}
		if t.GetAmount() > 0 {
			amount = t.GetAmount()
		}
		rec.Decision, rec.PendingState, rec.CommitAmount = decCommit, statePosted, amount
	} else {
		rec.Decision, rec.PendingState = decAbort, stateVoided
	}
	rec.ResolvedBy, rec.DecidedAtUnixNano = t.GetId(), a.now
	a.putStatus(rec)
	stored := t.CloneVT()
	stored.CreatedAt = timestamppb.New(time.Unix(0, a.now).UTC())
	a.ov.Set(key(prefixResolved, t.GetId()), marshal(&raftv1.StoredTransfer{Transfer: stored, Status: stCreated,
		Amount: amount, Currency: pt.Currency}))
	return answer(stCreated, "", rec), nil
}

func expired(rec *raftv1.TxnRecord, now int64) bool {
	return rec.Decision == decHold && rec.ExpiresAtUnixNano > 0 && now >= rec.ExpiresAtUnixNano
}

func (a *Applier) expireTxn(rec *raftv1.TxnRecord) {
	rec.Decision, rec.PendingState, rec.DecidedAtUnixNano = decAbort, stateExpired, a.now
	a.putStatus(rec)
}

func (a *Applier) expireTxns(e *raftv1.ExpireTxns) (*raftv1.CommandResult, error) {
	res := &raftv1.CommandResult{}
	for _, id := range e.GetTxnIds() {
		rec, err := a.getTxn(id)
		if err != nil {
			return nil, err
		}
		if rec == nil {
			continue
		}
		if expired(rec, a.now) {
			a.expireTxn(rec)
		}
		res.Transfers = append(res.Transfers, &ledgerv1.TransferResult{Id: id})
	}
	return res, nil
}

func marshal(m proto.Message) []byte {
	b, err := wire.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("coordinator: marshal %T: %v", m, err))
	}
	return b
}

// GroupOf picks a transaction's coordinator group by hash of its id, so a retry reaches
// the same group.
func GroupOf(txnID string, groups []uint64) uint64 {
	if len(groups) == 0 {
		return 0
	}
	return groups[xxhash.Sum64String(txnID)%uint64(len(groups))]
}

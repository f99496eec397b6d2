package ledger

import (
	"fmt"
	"math/bits"
	"time"

	"github.com/shardledger/shardledger/internal/wire"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

type status = ledgerv1.TransferStatus

const (
	stCreated        = ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED
	stExists         = ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS
	stIDReused       = ledgerv1.TransferStatus_TRANSFER_STATUS_ID_REUSED
	stDebitNotFound  = ledgerv1.TransferStatus_TRANSFER_STATUS_DEBIT_ACCOUNT_NOT_FOUND
	stCreditNotFound = ledgerv1.TransferStatus_TRANSFER_STATUS_CREDIT_ACCOUNT_NOT_FOUND
	stSameAccount    = ledgerv1.TransferStatus_TRANSFER_STATUS_SAME_ACCOUNT
	stCurrency       = ledgerv1.TransferStatus_TRANSFER_STATUS_CURRENCY_MISMATCH
	stInsufficient   = ledgerv1.TransferStatus_TRANSFER_STATUS_INSUFFICIENT_FUNDS
	stExceedsDebits  = ledgerv1.TransferStatus_TRANSFER_STATUS_EXCEEDS_DEBITS
	stInvalidAmount  = ledgerv1.TransferStatus_TRANSFER_STATUS_INVALID_AMOUNT
	stOverflow       = ledgerv1.TransferStatus_TRANSFER_STATUS_OVERFLOW
	stPendingNF      = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_NOT_FOUND
	stAlreadyPosted  = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_ALREADY_POSTED
	stAlreadyVoided  = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_ALREADY_VOIDED
	stExpired        = ledgerv1.TransferStatus_TRANSFER_STATUS_PENDING_EXPIRED
	stLinkedFailed   = ledgerv1.TransferStatus_TRANSFER_STATUS_LINKED_EVENT_FAILED

	statePending = ledgerv1.TransferState_TRANSFER_STATE_PENDING
	statePosted  = ledgerv1.TransferState_TRANSFER_STATE_POSTED
	stateVoided  = ledgerv1.TransferState_TRANSFER_STATE_VOIDED
	stateExpired = ledgerv1.TransferState_TRANSFER_STATE_EXPIRED
)

func timeFromUnixNano(ns int64) time.Time { return time.Unix(0, ns).UTC() }

// outcome is the result of one transfer before the chain decides what is stored.
type outcome struct {
	status status
	msg    string
	// fresh: the transfer had no record; a failure outcome is stored for it.
	fresh bool
}

func (o outcome) ok() bool { return o.status == stCreated || o.status == stExists }

func (a *Applier) createTransfers(ct *raftv1.CreateTransfers) (*raftv1.CommandResult, error) {
	ts := ct.GetTransfers()
	for i, t := range ts {
		if err := ValidateTransfer(t); err != nil {
			return &raftv1.CommandResult{Refusal: raftv1.Refusal_REFUSAL_MALFORMED,
				Message: fmt.Sprintf("transfer %d: %v", i, err)}, nil
		}
	}
	if n := len(ts); n > 0 && ts[n-1].GetLinked() {
		return &raftv1.CommandResult{Refusal: raftv1.Refusal_REFUSAL_MALFORMED,
			Message: "the last transfer is linked: the chain is not closed"}, nil
	}
	res := &raftv1.CommandResult{Transfers: make([]*ledgerv1.TransferResult, len(ts))}
	outs := make([]outcome, len(ts))
	for i := 0; i < len(ts); {
		j := i // the chain is ts[i..j]
		for ts[j].GetLinked() {
			j++
		}
		linked := j > i
		mark, seq := 0, a.state.EventSeq
		if linked {
			mark = a.ov.Mark() // a linked chain fails whole
		}
		failed := -1
		for k := i; k <= j; k++ {
			o, err := a.transfer(ts[k])
			if err != nil {
				return nil, err
			}
			outs[k] = o
			if !o.ok() {
				failed = k
				break
			}
		}
		if failed >= 0 && linked {
			// A linked chain fails whole: undo its effects; transfers that already had an
			// outcome keep it, the others fail with LINKED_EVENT_FAILED.
			a.ov.Rollback(mark)
			a.dropEvents(seq)
			// Outcomes are recorded in chain order, so an id repeated within the chain
			// replays the outcome of its first occurrence.
			for k := i; k <= j; k++ {
				if k != failed {
					old, err := a.getTransfer(ts[k].GetDebitAccountId(), ts[k].GetId())
					if err != nil {
						return nil, err
					}
					if old != nil {
						outs[k] = replay(old, ts[k])
					} else {
						outs[k] = outcome{status: stLinkedFailed, fresh: true,
							msg: fmt.Sprintf("linked transfer %q failed", ts[failed].GetId())}
					}
				}
				if !outs[k].ok() && outs[k].fresh {
					a.storeFailure(ts[k], outs[k])
					outs[k].fresh = false
				}
			}
		}
		if linked {
			a.ov.Release(mark)
		}
		for k := i; k <= j; k++ {
			o := outs[k]
			if !o.ok() && o.fresh {
				a.storeFailure(ts[k], o)
			}
			res.Transfers[k] = &ledgerv1.TransferResult{Id: ts[k].GetId(), Status: o.status, Message: o.msg}
		}
		i = j + 1
	}
	return res, nil
}

// replay is the answer to a transfer whose id already has an outcome.
func replay(old *raftv1.StoredTransfer, t *ledgerv1.Transfer) outcome {
	if !SameTransferFields(old.Transfer, t) {
		return outcome{status: stIDReused, msg: "a transfer with this id exists with different fields"}
	}
	if old.Status == stCreated {
		return outcome{status: stExists}
	}
	return outcome{status: old.Status, msg: old.Message}
}

// storeFailure records a failed transfer's outcome under its debit account's slot, so a
// retry with the same id answers the same. A failure with no debit account to store under
// (a post or void naming no accounts) is not recorded.
func (a *Applier) storeFailure(t *ledgerv1.Transfer, o outcome) {
	if t.GetDebitAccountId() == "" {
		return
	}
	rec := &raftv1.StoredTransfer{Transfer: stripForStore(t, a), Status: o.status, Message: o.msg,
		Amount: t.GetAmount(), Currency: t.GetCurrency()}
	a.ov.Set(transferKey(a.slot(t.GetDebitAccountId()), t.GetId()), mustMarshal(rec))
}

func stripForStore(t *ledgerv1.Transfer, a *Applier) *ledgerv1.Transfer {
	c := t.CloneVT()
	c.Linked = false
	c.CreatedAt = a.timestamp()
	return c
}

func (a *Applier) getTransfer(debitID, id string) (*raftv1.StoredTransfer, error) {
	if debitID == "" {
		return nil, nil
	}
	v, ok, err := a.ov.Get(transferKey(a.slot(debitID), id))
	if err != nil || !ok {
		return nil, err
	}
	rec := &raftv1.StoredTransfer{}
	if err := wire.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("decode transfer %q: %w", id, err)
	}
	return rec, nil
}

func (a *Applier) putTransfer(rec *raftv1.StoredTransfer) {
	t := rec.Transfer
	slot := a.slot(t.DebitAccountId)
	tk := transferKey(slot, t.Id)
	a.ov.Set(tk, mustMarshal(rec))
	a.ov.Set(indexKey(t.Id), slotKey(prefixIndex, slot, ""))
	// Open pending transfers are indexed for expiry and audits.
	if t.Pending && t.State == statePending {
		a.ov.Set(pendingKey(tk), tk)
	} else if t.Pending {
		a.ov.Delete(pendingKey(tk))
	}
}

// SameTransferFields compares what the client chose (not linked, not ledger-set fields).
func SameTransferFields(a, b *ledgerv1.Transfer) bool {
	return a.GetDebitAccountId() == b.GetDebitAccountId() && a.GetCreditAccountId() == b.GetCreditAccountId() &&
		a.GetAmount() == b.GetAmount() && a.GetCurrency() == b.GetCurrency() && a.GetCode() == b.GetCode() &&
		a.GetUserData() == b.GetUserData() && a.GetPending() == b.GetPending() &&
		a.GetPostPendingId() == b.GetPostPendingId() && a.GetVoidPendingId() == b.GetVoidPendingId() &&
		a.GetTimeoutSeconds() == b.GetTimeoutSeconds()
}

// transfer applies one transfer (its effects on success) and returns its outcome.
func (a *Applier) transfer(t *ledgerv1.Transfer) (outcome, error) {
	old, err := a.getTransfer(t.GetDebitAccountId(), t.GetId())
	if err != nil {
		return outcome{}, err
	}
	if old != nil {
		return replay(old, t), nil
	}
	if t.GetPostPendingId() != "" || t.GetVoidPendingId() != "" {
		return a.resolvePending(t)
	}
	o, dr, cr, err := a.checkTransfer(t.GetDebitAccountId(), t.GetCreditAccountId(), t.GetAmount(), t.GetCurrency(), t.GetPending())
	if err != nil || o.status != stCreated {
		return o, err
	}
	amt := t.GetAmount()
	rec := &raftv1.StoredTransfer{Transfer: stripForStore(t, a), Status: stCreated, Amount: amt, Currency: t.GetCurrency()}
	kind := raftv1.EventKind_EVENT_KIND_TRANSFER_POSTED
	if t.GetPending() {
		dr.DebitsPending += amt
		cr.CreditsPending += amt
		rec.Transfer.State = statePending
		rec.PendingAmount = amt
		if t.GetTimeoutSeconds() > 0 {
			rec.ExpiresAtUnixNano = a.now + int64(t.GetTimeoutSeconds())*int64(time.Second)
		}
		kind = raftv1.EventKind_EVENT_KIND_TRANSFER_PENDING
	} else {
		dr.DebitsPosted += amt
		cr.CreditsPosted += amt
	}
	a.putAccount(dr)
	a.putAccount(cr)
	a.putTransfer(rec)
	a.emit(&raftv1.Event{Kind: kind, Slot: a.slot(t.GetDebitAccountId()), Transfer: rec.Transfer, Amount: amt})
	return outcome{status: stCreated, fresh: true}, nil
}

// checkTransfer validates moving amount from debit to credit (posted, or reserved when
// pending) and returns the loaded accounts when it may proceed.
func (a *Applier) checkTransfer(debitID, creditID string, amount uint64, currency string, pending bool) (outcome, *ledgerv1.Account, *ledgerv1.Account, error) {
	fail := func(s status, msg string) (outcome, *ledgerv1.Account, *ledgerv1.Account, error) {
		return outcome{status: s, msg: msg, fresh: true}, nil, nil, nil
	}
	if amount == 0 {
		return fail(stInvalidAmount, "amount must be greater than zero")
	}
	if debitID == creditID {
		return fail(stSameAccount, "debit and credit accounts are the same")
	}
	dr, err := a.getAccount(debitID)
	if err != nil {
		return outcome{}, nil, nil, err
	}
	if dr == nil {
		return fail(stDebitNotFound, fmt.Sprintf("debit account %q not found", debitID))
	}
	cr, err := a.getAccount(creditID)
	if err != nil {
		return outcome{}, nil, nil, err
	}
	if cr == nil {
		return fail(stCreditNotFound, fmt.Sprintf("credit account %q not found", creditID))
	}
	if dr.Currency != currency || cr.Currency != currency {
		return fail(stCurrency, fmt.Sprintf("transfer currency %s, debit account %s, credit account %s", currency, dr.Currency, cr.Currency))
	}
	if s, msg := debitCheck(dr, amount); s != stCreated {
		return fail(s, msg)
	}
	if s, msg := creditCheck(cr, amount); s != stCreated {
		return fail(s, msg)
	}
	return outcome{status: stCreated}, dr, cr, nil
}

// debitCheck tells whether amount more may be debited (posted or reserved) from acc.
func debitCheck(acc *ledgerv1.Account, amount uint64) (status, string) {
	held, c1 := bits.Add64(acc.DebitsPosted, acc.DebitsPending, 0)
	total, c2 := bits.Add64(held, amount, 0)
	if c1 != 0 || c2 != 0 {
		return stOverflow, fmt.Sprintf("debits of account %q would overflow", acc.Id)
	}
	if acc.DebitsMustNotExceedCredits && total > acc.CreditsPosted {
		return stInsufficient, fmt.Sprintf("account %q: available %d, needed %d", acc.Id, acc.CreditsPosted-min(held, acc.CreditsPosted), amount)
	}
	return stCreated, ""
}

// creditCheck tells whether amount more may be credited (posted or reserved) to acc.
func creditCheck(acc *ledgerv1.Account, amount uint64) (status, string) {
	held, c1 := bits.Add64(acc.CreditsPosted, acc.CreditsPending, 0)
	total, c2 := bits.Add64(held, amount, 0)
	if c1 != 0 || c2 != 0 {
		return stOverflow, fmt.Sprintf("credits of account %q would overflow", acc.Id)
	}
	if acc.CreditsMustNotExceedDebits && total > acc.DebitsPosted {
		return stExceedsDebits, fmt.Sprintf("account %q: credits would exceed debits", acc.Id)
	}
	return stCreated, ""
}

// resolvePending posts or voids a pending transfer.
func (a *Applier) resolvePending(t *ledgerv1.Transfer) (outcome, error) {
	post := t.GetPostPendingId() != ""
	pid := t.GetPostPendingId()
	if !post {
		pid = t.GetVoidPendingId()
	}
	fail := func(s status, msg string) (outcome, error) { return outcome{status: s, msg: msg, fresh: true}, nil }
	p, err := a.getTransfer(t.GetDebitAccountId(), pid)
	if err != nil {
		return outcome{}, err
	}
	if p == nil || p.Status != stCreated || !p.Transfer.GetPending() {
		return fail(stPendingNF, fmt.Sprintf("pending transfer %q not found", pid))
	}
	pt := p.Transfer
	if t.GetDebitAccountId() != pt.DebitAccountId {
		// Another account of the same slot: its own pending transfers only.
		return fail(stPendingNF, fmt.Sprintf("pending transfer %q debits %q, not %q", pid, pt.DebitAccountId, t.GetDebitAccountId()))
	}
	if t.GetCreditAccountId() != "" && t.GetCreditAccountId() != pt.CreditAccountId {
		return fail(stPendingNF, fmt.Sprintf("pending transfer %q credits %q, not %q", pid, pt.CreditAccountId, t.GetCreditAccountId()))
	}
	if t.GetCurrency() != "" && t.GetCurrency() != pt.Currency {
		return fail(stCurrency, fmt.Sprintf("pending transfer %q is in %s", pid, pt.Currency))
	}
	switch pt.State {
	case statePosted:
		return fail(stAlreadyPosted, fmt.Sprintf("pending transfer %q was already posted", pid))
	case stateVoided:
		return fail(stAlreadyVoided, fmt.Sprintf("pending transfer %q was already voided", pid))
	case stateExpired:
		return fail(stExpired, fmt.Sprintf("pending transfer %q expired", pid))
	}
	dr, err := a.getAccount(pt.DebitAccountId)
	if err != nil {
		return outcome{}, err
	}
	cr, err := a.getAccount(pt.CreditAccountId)
	if err != nil {
		return outcome{}, err
	}
	if dr == nil || cr == nil {
		return outcome{}, fmt.Errorf("pending transfer %q names a missing account", pid)
	}
	held := p.PendingAmount
	if dr.DebitsPending < held || cr.CreditsPending < held {
		return outcome{}, fmt.Errorf("pending transfer %q holds %d but accounts hold %d/%d", pid, held, dr.DebitsPending, cr.CreditsPending)
	}
	release := func(state ledgerv1.TransferState) {
		dr.DebitsPending -= held
		cr.CreditsPending -= held
		p.PendingAmount = 0
		pt.State = state
	}
	if p.ExpiresAtUnixNano > 0 && a.now >= p.ExpiresAtUnixNano {
		// Expired by the logged clock: release the reservation now (deterministic).
		if err := a.expire(p); err != nil {
			return outcome{}, err
		}
		return fail(stExpired, fmt.Sprintf("pending transfer %q expired", pid))
	}
	amt := held
	kind := raftv1.EventKind_EVENT_KIND_PENDING_VOIDED
	if post {
		if t.GetAmount() > held {
			return fail(stInvalidAmount, fmt.Sprintf("amount %d exceeds the pending amount %d", t.GetAmount(), held))
		}
		if t.GetAmount() > 0 {
			amt = t.GetAmount()
		}
		if _, c := bits.Add64(dr.DebitsPosted, amt, 0); c != 0 {
			return fail(stOverflow, "debits posted would overflow")
		}
		if _, c := bits.Add64(cr.CreditsPosted, amt, 0); c != 0 {
			return fail(stOverflow, "credits posted would overflow")
		}
		release(statePosted)
		dr.DebitsPosted += amt
		cr.CreditsPosted += amt
		kind = raftv1.EventKind_EVENT_KIND_PENDING_POSTED
	} else {
		release(stateVoided)
	}
	a.putAccount(dr)
	a.putAccount(cr)
	a.putTransfer(p)
	rec := &raftv1.StoredTransfer{Transfer: stripForStore(t, a), Status: stCreated, Amount: amt, Currency: pt.Currency}
	if !post {
		rec.Amount = held
	}
	a.putTransfer(rec)
	a.emit(&raftv1.Event{Kind: kind, Slot: a.slot(pt.DebitAccountId), Transfer: rec.Transfer, Amount: rec.Amount})
	return outcome{status: stCreated, fresh: true}, nil
}

// expirePending releases the named pending transfers whose timeout has passed by the
// command's time (the proposer found them; the state machine decides).
func (a *Applier) expirePending(e *raftv1.ExpirePending) (*raftv1.CommandResult, error) {
	res := &raftv1.CommandResult{}
	for _, ref := range e.GetTransfers() {
		r := &ledgerv1.TransferResult{Id: ref.GetId(), Status: stPendingNF}
		res.Transfers = append(res.Transfers, r)
		if ValidateID(ref.GetId()) != nil || ValidateID(ref.GetDebitAccountId()) != nil {
			continue
		}
		p, err := a.getTransfer(ref.GetDebitAccountId(), ref.GetId())
		if err != nil {
			return nil, err
		}
		if p == nil || p.Status != stCreated || !p.Transfer.GetPending() {
			continue
		}
		if p.Transfer.State != statePending || p.ExpiresAtUnixNano == 0 || a.now < p.ExpiresAtUnixNano {
			r.Status, r.Message = stCreated, "not expired"
			continue
		}
		if err := a.expire(p); err != nil {
			return nil, err
		}
		r.Status = stExpired
	}
	return res, nil
}

// expire releases an expired pending transfer's reservation.
func (a *Applier) expire(p *raftv1.StoredTransfer) error {
	pt := p.Transfer
	dr, err := a.getAccount(pt.DebitAccountId)
	if err != nil {
		return err
	}
	cr, err := a.getAccount(pt.CreditAccountId)
	if err != nil {
		return err
	}
	if dr == nil || cr == nil {
		return fmt.Errorf("pending transfer %q names a missing account", pt.Id)
	}
	held := p.PendingAmount
	if dr.DebitsPending < held || cr.CreditsPending < held {
		return fmt.Errorf("pending transfer %q holds %d but accounts hold %d/%d", pt.Id, held, dr.DebitsPending, cr.CreditsPending)
	}
	dr.DebitsPending -= held
	cr.CreditsPending -= held
	p.PendingAmount = 0
	pt.State = stateExpired
	a.putAccount(dr)
	a.putAccount(cr)
	a.putTransfer(p)
	a.emit(&raftv1.Event{Kind: raftv1.EventKind_EVENT_KIND_PENDING_EXPIRED, Slot: a.slot(pt.DebitAccountId), Transfer: pt, Amount: held})
	return nil
}

package ledger

import (
	"fmt"

	"github.com/shardledger/shardledger/internal/wire"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// The participant side of cross-shard transactions: a branch reserves an amount on one
// account (Prepare), then is posted (Commit) or released (Abort). Every step is
// idempotent; an abort of an unknown branch leaves a tombstone so a late prepare is
// refused and never leaves a hanging reservation.

const (
	brPrepared  = raftv1.BranchState_BRANCH_STATE_PREPARED
	brRefused   = raftv1.BranchState_BRANCH_STATE_REFUSED
	brCommitted = raftv1.BranchState_BRANCH_STATE_COMMITTED
	brAborted   = raftv1.BranchState_BRANCH_STATE_ABORTED
)

func (a *Applier) getBranch(accountID, txnID string, index uint32) (*raftv1.StoredBranch, error) {
	v, ok, err := a.ov.Get(branchKey(a.slot(accountID), txnID, index))
	if err != nil || !ok {
		return nil, err
	}
	rec := &raftv1.StoredBranch{}
	if err := wire.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("decode branch %q/%d: %w", txnID, index, err)
	}
	return rec, nil
}

// putBranch stores a branch record. Prepared branches are indexed by their command's
// prepared list (prepare, storeList); unindex takes a resolved one off it.
func (a *Applier) putBranch(rec *raftv1.StoredBranch) []byte {
	b := rec.Branch
	bk := branchKey(a.slot(b.AccountId), b.TxnId, b.Index)
	if rec.State == brPrepared {
		a.ov.Set(bk, mustMarshal(rec)) // read back by its commit or abort
	} else {
		a.ov.SetCold(bk, mustMarshal(rec)) // final: read again only by a late retry
	}
	return bk
}

func voteOf(rec *raftv1.StoredBranch, msg string) *raftv1.Vote {
	return &raftv1.Vote{TxnId: rec.Branch.TxnId, Index: rec.Branch.Index, State: rec.State, Status: rec.Status, Message: msg}
}

func (a *Applier) prepare(p *raftv1.PrepareBranches) (*raftv1.CommandResult, error) {
	for i, b := range p.GetBranches() {
		if err := validateBranch(b.GetTxnId(), b.GetAccountId()); err != nil {
			return &raftv1.CommandResult{Refusal: raftv1.Refusal_REFUSAL_MALFORMED, Message: fmt.Sprintf("branch %d: %v", i, err)}, nil
		}
	}
	res := &raftv1.CommandResult{}
	var list [][]byte // the branches this command prepares, indexed as one list
	seq := a.state.PreparedListSeq + 1
	for _, b := range p.GetBranches() {
		old, err := a.getBranch(b.AccountId, b.TxnId, b.Index)
		if err != nil {
			return nil, err
		}
		if old != nil {
			// A retry sees its branch as it stands (an aborted or refused one refuses the
			// late prepare). A prepared or committed branch with other fields under the
			// same key (a transaction id reused) is not this branch: refused, left alone.
			if (old.State == brPrepared || old.State == brCommitted) && !sameBranch(old.Branch, b) {
				res.Votes = append(res.Votes, &raftv1.Vote{TxnId: b.TxnId, Index: b.Index, State: brRefused, Status: stIDReused,
					Message: fmt.Sprintf("branch %q/%d exists with different fields", b.TxnId, b.Index)})
				continue
			}
			res.Votes = append(res.Votes, voteOf(old, ""))
			continue
		}
		rec := &raftv1.StoredBranch{Branch: b.CloneVT(), State: brPrepared, Status: stCreated,
			PreparedAtUnixNano: a.now}
		s, msg, err := a.reserve(b)
		if err != nil {
			return nil, err
		}
		if s != stCreated {
			rec.State, rec.Status = brRefused, s
		} else {
			rec.PreparedList = seq
		}
		bk := a.putBranch(rec)
		if rec.State == brPrepared {
			list = append(list, bk)
			a.emit(&raftv1.Event{Kind: raftv1.EventKind_EVENT_KIND_BRANCH_PREPARED, Slot: a.slot(b.AccountId), Branch: rec.Branch, Amount: b.Amount})
		}
		res.Votes = append(res.Votes, voteOf(rec, msg))
	}
	if len(list) > 0 {
		a.state.PreparedListSeq = seq
		preparedLists().Store(a.ov, seq, list, len(list))
	}
	return res, nil
}

func sameBranch(a, b *raftv1.Branch) bool {
	return a.GetAccountId() == b.GetAccountId() && a.GetDebit() == b.GetDebit() &&
		a.GetAmount() == b.GetAmount() && a.GetCurrency() == b.GetCurrency()
}

func validateBranch(txnID, accountID string) error {
	if err := ValidateID(txnID); err != nil {
		return fmt.Errorf("txn_id: %w", err)
	}
	if err := ValidateID(accountID); err != nil {
		return fmt.Errorf("account_id: %w", err)
	}
	return nil
}

// reserve checks and reserves a branch's amount on its account.
func (a *Applier) reserve(b *raftv1.Branch) (status, string, error) {
	if b.Amount == 0 {
		return stInvalidAmount, "amount must be greater than zero", nil
	}
	acc, err := a.getAccount(b.AccountId)
	if err != nil {
		return 0, "", err
	}
	notFound := stCreditNotFound
	if b.Debit {
		notFound = stDebitNotFound
	}
	if acc == nil {
		return notFound, fmt.Sprintf("account %q not found", b.AccountId), nil
	}
	if acc.Currency != b.Currency {
		return stCurrency, fmt.Sprintf("account %q is in %s, not %s", acc.Id, acc.Currency, b.Currency), nil
	}
	var s status
	var msg string
	if b.Debit {
		s, msg = debitCheck(acc, b.Amount)
	} else {
		s, msg = creditCheck(acc, b.Amount)
	}
	if s != stCreated {
		return s, msg, nil
	}
	if b.Debit {
		acc.DebitsPending += b.Amount
	} else {
		acc.CreditsPending += b.Amount
	}
	a.putAccount(acc)
	return stCreated, "", nil
}

func (a *Applier) resolve(r *raftv1.ResolveBranches) (*raftv1.CommandResult, error) {
	for i, b := range r.GetBranches() {
		if err := validateBranch(b.GetTxnId(), b.GetAccountId()); err != nil {
			return &raftv1.CommandResult{Refusal: raftv1.Refusal_REFUSAL_MALFORMED, Message: fmt.Sprintf("branch %d: %v", i, err)}, nil
		}
	}
	res := &raftv1.CommandResult{}
	for _, ref := range r.GetBranches() {
		rec, err := a.getBranch(ref.AccountId, ref.TxnId, ref.Index)
		if err != nil {
			return nil, err
		}
		var v *raftv1.Vote
		if r.GetCommit() {
			v, err = a.commitBranch(ref, rec)
		} else {
			v, err = a.abortBranch(ref, rec)
		}
		if err != nil {
			return nil, err
		}
		res.Votes = append(res.Votes, v)
	}
	return res, nil
}

func (a *Applier) commitBranch(ref *raftv1.BranchRef, rec *raftv1.StoredBranch) (*raftv1.Vote, error) {
	if rec == nil {
		return &raftv1.Vote{TxnId: ref.TxnId, Index: ref.Index, Message: "commit of an unknown branch"}, nil
	}
	switch rec.State {
	case brCommitted:
		return voteOf(rec, ""), nil
	case brPrepared:
	default:
		return voteOf(rec, fmt.Sprintf("cannot commit a branch in state %s", rec.State)), nil
	}
	b := rec.Branch
	// A partial commit (a TCC post of less than the reservation) posts ref.Amount and
	// releases the rest.
	posted := b.Amount
	if ref.Amount > b.Amount {
		return voteOf(rec, fmt.Sprintf("commit amount %d exceeds the reserved %d", ref.Amount, b.Amount)), nil
	}
	if ref.Amount > 0 {
		posted = ref.Amount
	}
	acc, err := a.getAccount(b.AccountId)
	if err != nil {
		return nil, err
	}
	if acc == nil {
		return nil, fmt.Errorf("prepared branch %q/%d names missing account %q", b.TxnId, b.Index, b.AccountId)
	}
	if b.Debit {
		if acc.DebitsPending < b.Amount {
			return nil, fmt.Errorf("branch %q/%d holds %d but account holds %d", b.TxnId, b.Index, b.Amount, acc.DebitsPending)
		}
		acc.DebitsPending -= b.Amount
		acc.DebitsPosted += posted // no overflow: posted+pending was checked at prepare
	} else {
		if acc.CreditsPending < b.Amount {
			return nil, fmt.Errorf("branch %q/%d holds %d but account holds %d", b.TxnId, b.Index, b.Amount, acc.CreditsPending)
		}
		acc.CreditsPending -= b.Amount
		acc.CreditsPosted += posted
	}
	a.putAccount(acc)
	rec.State = brCommitted
	a.putBranch(rec)
	if err := a.unindex(rec); err != nil {
		return nil, err
	}
	a.emit(&raftv1.Event{Kind: raftv1.EventKind_EVENT_KIND_BRANCH_COMMITTED, Slot: a.slot(b.AccountId), Branch: b, Amount: posted})
	return voteOf(rec, ""), nil
}

func (a *Applier) abortBranch(ref *raftv1.BranchRef, rec *raftv1.StoredBranch) (*raftv1.Vote, error) {
	if rec == nil {
		// Abort before prepare: a tombstone refuses any late prepare of this branch.
		rec = &raftv1.StoredBranch{Branch: &raftv1.Branch{TxnId: ref.TxnId, Index: ref.Index, AccountId: ref.AccountId}, State: brAborted}
		a.putBranch(rec)
		a.emit(&raftv1.Event{Kind: raftv1.EventKind_EVENT_KIND_BRANCH_ABORTED, Slot: a.slot(ref.AccountId), Branch: rec.Branch})
		return voteOf(rec, ""), nil
	}
	switch rec.State {
	case brAborted:
		return voteOf(rec, ""), nil
	case brCommitted:
		return voteOf(rec, "cannot abort a committed branch"), nil
	case brRefused:
		rec.State = brAborted
		a.putBranch(rec)
		return voteOf(rec, ""), nil
	}
	b := rec.Branch
	acc, err := a.getAccount(b.AccountId)
	if err != nil {
		return nil, err
	}
	if acc == nil {
		return nil, fmt.Errorf("prepared branch %q/%d names missing account %q", b.TxnId, b.Index, b.AccountId)
	}
	if b.Debit {
		if acc.DebitsPending < b.Amount {
			return nil, fmt.Errorf("branch %q/%d holds %d but account holds %d", b.TxnId, b.Index, b.Amount, acc.DebitsPending)
		}
		acc.DebitsPending -= b.Amount
	} else {
		if acc.CreditsPending < b.Amount {
			return nil, fmt.Errorf("branch %q/%d holds %d but account holds %d", b.TxnId, b.Index, b.Amount, acc.CreditsPending)
		}
		acc.CreditsPending -= b.Amount
	}
	a.putAccount(acc)
	rec.State = brAborted
	a.putBranch(rec)
	if err := a.unindex(rec); err != nil {
		return nil, err
	}
	a.emit(&raftv1.Event{Kind: raftv1.EventKind_EVENT_KIND_BRANCH_ABORTED, Slot: a.slot(b.AccountId), Branch: b, Amount: b.Amount})
	return voteOf(rec, ""), nil
}

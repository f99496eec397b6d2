package coordinator

import (
	"errors"
	"fmt"

	"github.com/shardledger/shardledger/internal/wire"
	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// OpenMax bounds how many open transactions one query returns.
const OpenMax = 100_000

// ReadTxn reads a transaction record (nil when unknown): the record as created with its
// latest status over it. Where the open index keeps it (open_list, which depends on how
// commands were grouped into entries) is left out, as in every answer.
func ReadTxn(r ledger.Reader, txnID string) (*raftv1.TxnRecord, error) {
	rec, err := readTxn(r, txnID)
	if rec != nil {
		rec.OpenList = 0
	}
	return rec, err
}

// readTxn is ReadTxn with the record's open list (for the state machine).
func readTxn(r ledger.Reader, txnID string) (*raftv1.TxnRecord, error) {
	v, ok, err := r.Get(key(prefixTxn, txnID))
	if err != nil || !ok {
		return nil, err
	}
	rec, err := decodeTxn(txnID, v)
	if err != nil {
		return nil, err
	}
	v, ok, err = r.Get(key(prefixStatus, txnID))
	if err != nil || !ok {
		return rec, err
	}
	st := &raftv1.TxnRecord{}
	if err := wire.Unmarshal(v, st); err != nil {
		return nil, fmt.Errorf("decode status of txn %q: %w", txnID, err)
	}
	setStatus(rec, st)
	return rec, nil
}

// statusOf is the part of a record that changes after it is created.
func statusOf(rec *raftv1.TxnRecord) *raftv1.TxnRecord {
	return &raftv1.TxnRecord{
		Decision:          rec.Decision,
		Status:            rec.Status,
		Message:           rec.Message,
		FailedIndex:       rec.FailedIndex,
		Forgotten:         rec.Forgotten,
		PendingState:      rec.PendingState,
		CommitAmount:      rec.CommitAmount,
		ResolvedBy:        rec.ResolvedBy,
		DecidedAtUnixNano: rec.DecidedAtUnixNano,
	}
}

// setStatus copies a stored status (statusOf) onto a record.
func setStatus(rec, st *raftv1.TxnRecord) {
	rec.Decision = st.Decision
	rec.Status = st.Status
	rec.Message = st.Message
	rec.FailedIndex = st.FailedIndex
	rec.Forgotten = st.Forgotten
	rec.PendingState = st.PendingState
	rec.CommitAmount = st.CommitAmount
	rec.ResolvedBy = st.ResolvedBy
	rec.DecidedAtUnixNano = st.DecidedAtUnixNano
}

// decodeTxn decodes a stored record. Records are stored without their branches, which
// Branches derives from the transfers (records written before that keep theirs).
func decodeTxn(txnID string, v []byte) (*raftv1.TxnRecord, error) {
	rec := &raftv1.TxnRecord{}
	if err := wire.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("decode txn %q: %w", txnID, err)
	}
	if len(rec.Branches) == 0 && len(rec.Transfers) > 0 {
		rec.Branches = Branches(rec.TxnId, rec.Transfers)
	}
	return rec, nil
}

// ReadTxns reads records by txn id; unknown ids are left out.
func ReadTxns(r ledger.Reader, ids []string) ([]*raftv1.TxnRecord, error) {
	var out []*raftv1.TxnRecord
	for _, id := range ids {
		rec, err := ReadTxn(r, id)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			out = append(out, rec)
		}
	}
	return out, nil
}

// ReadOpen lists the transactions not yet forgotten (at most OpenMax): those of the
// open lists (see openLists) that are not forgotten, then those indexed under the
// earlier layout.
func ReadOpen(s ledger.Scanner) ([]*raftv1.TxnRecord, error) { return readOpen(s, OpenMax) }

// readOpen lists at most limit open transactions; it reads no record past them.
func readOpen(s ledger.Scanner, limit int) ([]*raftv1.TxnRecord, error) {
	var out []*raftv1.TxnRecord
	add := func(id []byte, listed bool) error {
		if len(out) >= limit {
			return ledger.ErrScanFull // reads no record, and no list, past the cap
		}
		rec, err := ReadTxn(s, string(id))
		if err != nil {
			return err
		}
		switch {
		case rec == nil:
			return fmt.Errorf("open txn %q has no record", id)
		case rec.Forgotten && listed:
			return nil // closed; its list holds others still open
		}
		out = append(out, rec)
		return nil
	}
	err := openLists().Scan(s, func(id []byte) error { return add(id, true) })
	if errors.Is(err, ledger.ErrScanFull) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	err = s.Scan([]byte{prefixOpen}, func(k, _ []byte) error { return add(k[1:], false) })
	if err != nil && !errors.Is(err, ledger.ErrScanFull) {
		return nil, err
	}
	return out, nil
}

// ReadTransfers finds transfers held by this coordinator group: transfers of
// transactions that took effect (committed, held, or a pending one later voided or
// expired) and posts/voids that succeeded. Failed ones are not found, as on shards.
func ReadTransfers(r ledger.Reader, ids []string) (found []*ledgerv1.Transfer, notFound []string, err error) {
	for _, id := range ids {
		t, err := readTransfer(r, id)
		if err != nil {
			return nil, nil, err
		}
		if t == nil {
			notFound = append(notFound, id)
		} else {
			found = append(found, t)
		}
	}
	return found, notFound, nil
}

// ReadUndecided returns the begun, undecided transactions that hold any of the transfer
// ids (each once). Such a transaction may already be committed (begun with every branch
// prepared: its router answered before logging the decision): a reader settles it
// before answering.
func ReadUndecided(r ledger.Reader, ids []string) ([]*raftv1.TxnRecord, error) {
	var out []*raftv1.TxnRecord
	seen := map[string]bool{}
	for _, id := range ids {
		txnID, ok, err := ownerOf(r, id)
		if err != nil {
			return nil, err
		}
		if !ok || seen[txnID] {
			continue
		}
		seen[txnID] = true
		rec, err := ReadTxn(r, txnID)
		if err != nil {
			return nil, err
		}
		if rec != nil && rec.Decision == decNone {
			out = append(out, rec)
		}
	}
	return out, nil
}

func readTransfer(r ledger.Reader, id string) (*ledgerv1.Transfer, error) {
	v, ok, err := r.Get(key(prefixResolved, id))
	if err != nil {
		return nil, err
	}
	if ok {
		rec := &raftv1.StoredTransfer{}
		if err := wire.Unmarshal(v, rec); err != nil {
			return nil, fmt.Errorf("decode resolved %q: %w", id, err)
		}
		if rec.Status != stCreated {
			return nil, nil
		}
		return ledger.Display(rec), nil
	}
	txnID, ok, err := ownerOf(r, id)
	if err != nil || !ok {
		return nil, err
	}
	rec, err := ReadTxn(r, txnID)
	if err != nil || rec == nil {
		return nil, err
	}
	return DisplayTransfer(rec, id), nil
}

// DisplayTransfer is transfer id of a transaction as clients see it, or nil when the
// transaction did not take effect.
func DisplayTransfer(rec *raftv1.TxnRecord, id string) *ledgerv1.Transfer {
	visible := rec.Decision == decCommit || rec.Decision == decHold ||
		(rec.Decision == decAbort && (rec.PendingState == stateVoided || rec.PendingState == stateExpired))
	if !visible {
		return nil
	}
	for _, t := range rec.Transfers {
		if t.GetId() == id {
			c := t.CloneVT()
			if c.Pending {
				c.State = rec.PendingState
			}
			return c
		}
	}
	return nil
}

// Outcome is the client's answer for each transfer of a decided transaction.
// existed marks a retry: successes answer EXISTS. Undecided: nil.
func Outcome(rec *raftv1.TxnRecord, existed bool) []*ledgerv1.TransferResult {
	if rec.Decision == decNone {
		return nil
	}
	out := make([]*ledgerv1.TransferResult, len(rec.Transfers))
	ok := rec.Decision == decCommit || rec.Decision == decHold ||
		(len(rec.Transfers) > 0 && rec.Transfers[0].GetPending() && rec.PendingState != ledgerv1.TransferState_TRANSFER_STATE_UNSPECIFIED)
	for i, t := range rec.Transfers {
		r := &ledgerv1.TransferResult{Id: t.GetId()}
		switch {
		case ok && existed:
			r.Status = stExists
		case ok:
			r.Status = stCreated
		case int(rec.FailedIndex) == i || rec.FailedIndex < 0:
			r.Status, r.Message = rec.Status, rec.Message
		default:
			r.Status = ledgerv1.TransferStatus_TRANSFER_STATUS_LINKED_EVENT_FAILED
			r.Message = fmt.Sprintf("linked transfer %q failed", rec.Transfers[rec.FailedIndex].GetId())
		}
		out[i] = r
	}
	return out
}

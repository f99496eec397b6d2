package coordinator

import (
	"context"
	"fmt"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// DecisionFromVotes is the decision a transaction's votes call for: COMMIT (HOLD for a
// pending transfer) when every branch voted PREPARED; ABORT, carrying the vote that
// shows it and naming that branch's transfer, when a branch is refused or aborted
// (stored states that never become prepared); nil while a vote is missing (its shard
// did not answer): nothing may be decided then, since the branch may be prepared and a
// transaction begun with every branch prepared is committed. ts carries the transfers
// when the decision creates the record (the two-round path), nil when it exists.
func DecisionFromVotes(txnID string, chain, ts []*ledgerv1.Transfer, votes []*raftv1.Vote) *raftv1.DecideTxn {
	if len(votes) != 2*len(chain) {
		return nil
	}
	for _, v := range votes {
		if v == nil {
			return nil
		}
	}
	for _, v := range votes {
		if !IsYes(v.GetState()) {
			st, msg := v.GetStatus(), v.GetMessage()
			if v.GetState() == raftv1.BranchState_BRANCH_STATE_ABORTED {
				st, msg = ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT, "a participant aborted the branch (timed out)"
			}
			if msg == "" {
				msg = st.String()
			}
			return &raftv1.DecideTxn{TxnId: txnID, Decision: decAbort, Status: st, Message: msg, Transfers: ts,
				Votes: []*raftv1.Vote{v}, FailedIndex: int32(TransferOf(v.GetIndex()))}
		}
	}
	dec := decCommit
	if chain[0].GetPending() {
		dec = decHold
	}
	return &raftv1.DecideTxn{TxnId: txnID, Decision: dec, Votes: votes, FailedIndex: -1, Transfers: ts}
}

// IsYes tells whether a branch in state st votes for a commit: PREPARED, or COMMITTED
// (a commit happened: the decision was logged already, or the transaction's router
// posted its branches after seeing every one prepared, before logging it).
func IsYes(st raftv1.BranchState) bool {
	return st == raftv1.BranchState_BRANCH_STATE_PREPARED || st == raftv1.BranchState_BRANCH_STATE_COMMITTED
}

// routerOwns tells whether a begun, undecided transaction is still its router's to
// decide at now (before the router's deadline logged in its Begin): neither the driver
// nor a participant's inquiry recovers it then (a loaded router is slow, not dead).
func routerOwns(rec *raftv1.TxnRecord, nowUnixNano int64) bool {
	return nowUnixNano < rec.RouterDeadlineUnixNano
}

// Recover decides a begun transaction nobody decided (its router died, or a reader
// needs it settled): it prepares every branch (idempotent: a branch keeps the state it
// has) and logs the decision the stored states call for. The decision that stands is
// returned (another may have been logged first).
func Recover(ctx context.Context, cl Cluster, group uint64, rec *raftv1.TxnRecord) (*raftv1.TxnRecord, error) {
	votes, err := cl.PrepareBranches(ctx, rec.Branches)
	if err != nil {
		return nil, fmt.Errorf("recover %q: prepare: %w", rec.TxnId, err)
	}
	dec := DecisionFromVotes(rec.TxnId, rec.Transfers, nil, votes)
	if dec == nil {
		return nil, fmt.Errorf("recover %q: a vote is missing", rec.TxnId)
	}
	res, err := cl.Propose(ctx, group, &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: dec}})
	if err != nil {
		return nil, fmt.Errorf("recover %q: decide: %w", rec.TxnId, err)
	}
	if res.GetTxn() == nil {
		return nil, fmt.Errorf("recover %q: decision refused: %s", rec.TxnId, res.GetMessage())
	}
	return res.Txn, nil
}

package coordinator

import (
	"fmt"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// DecisionFromVotes is the decision a transaction's votes call for: COMMIT (HOLD for a
// pending transfer) when every branch voted PREPARED; otherwise ABORT naming the first
// transfer whose branch did not. A missing vote (its shard did not answer) aborts with
// TRANSFER_STATUS_TIMED_OUT. ts carries the transfers when the decision creates the
// record (presumed abort), nil when the record exists.
func DecisionFromVotes(txnID string, chain, ts []*ledgerv1.Transfer, votes []*raftv1.Vote) *raftv1.DecideTxn {
	if len(votes) != 2*len(chain) {
		return &raftv1.DecideTxn{TxnId: txnID, Decision: decAbort, FailedIndex: -1, Transfers: ts,
			Status:  ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT,
			Message: fmt.Sprintf("%d votes for %d branches", len(votes), 2*len(chain))}
	}
	for i, v := range votes {
		if v == nil {
			return &raftv1.DecideTxn{TxnId: txnID, Decision: decAbort, Transfers: ts,
				Status:      ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT,
				Message:     "a participant did not answer the prepare in time",
				FailedIndex: int32(TransferOf(uint32(i)))}
		}
		if v.GetState() != raftv1.BranchState_BRANCH_STATE_PREPARED {
			st, msg := v.GetStatus(), v.GetMessage()
			if v.GetState() == raftv1.BranchState_BRANCH_STATE_ABORTED {
				st, msg = ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT, "a participant aborted the branch (timed out)"
			}
			if msg == "" {
				msg = st.String()
			}
			return &raftv1.DecideTxn{TxnId: txnID, Decision: decAbort, Status: st, Message: msg, Transfers: ts,
				FailedIndex: int32(TransferOf(v.GetIndex()))}
		}
	}
	dec := decCommit
	if chain[0].GetPending() {
		dec = decHold
	}
	return &raftv1.DecideTxn{TxnId: txnID, Decision: dec, Votes: votes, FailedIndex: -1, Transfers: ts}
}

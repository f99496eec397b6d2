package coordinator_test

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/shardledger/shardledger/coordinator"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Presumed abort: the router prepares first and sends the decision with the transfers;
// the record is created decided. An inquiry about a txn nobody decided logs an abort
// tombstone that any later decision reads.

func mtDecideWith(d raftv1.TxnDecision, ts []*ledgerv1.Transfer, votes ...*raftv1.Vote) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: &raftv1.DecideTxn{TxnId: ts[0].Id, Decision: d,
		Votes: votes, FailedIndex: -1, Transfers: ts}}}
}

func mtAbortWith(ts []*ledgerv1.Transfer, st ledgerv1.TransferStatus, failedIndex int32) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: &raftv1.DecideTxn{TxnId: ts[0].Id, Decision: mtAbort,
		Status: st, Message: "m", FailedIndex: failedIndex, Transfers: ts, Votes: []*raftv1.Vote{mtNo(ts[0].Id, 0)}}}}
}

// mtYesFor is a PREPARED vote for every branch of a chain not yet recorded.
func mtYesFor(ts []*ledgerv1.Transfer) []*raftv1.Vote {
	return mtYes(&raftv1.TxnRecord{TxnId: ts[0].Id, Transfers: ts})
}

func TestDecideCreatesRecord(t *testing.T) {
	chain := mtChain(mtXfer("x1", "a", "b", 5), mtXfer("x2", "c", "d", 7))
	cases := []struct {
		name     string
		cmd      *raftv1.Command
		decision raftv1.TxnDecision
		status   ledgerv1.TransferStatus
	}{
		{"commit with every vote yes", mtDecideWith(mtCommit, chain, mtYesFor(chain)...), mtCommit, 0},
		{"abort naming the failed transfer", mtAbortWith(chain, mtInsufficient, 1), mtAbort, mtInsufficient},
		{"abort with a success status answers a failure", mtAbortWith(chain, ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED, -1),
			mtAbort, ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newMTCoord(t)
			rec := c.decide(tc.cmd)
			if rec.Decision != tc.decision || rec.Status != tc.status || len(rec.Transfers) != 2 || len(rec.Branches) != 4 {
				t.Fatalf("record %v", rec)
			}
			if rec.BegunAtUnixNano != c.now || rec.DecidedAtUnixNano != c.now || rec.Forgotten {
				t.Errorf("times or forgotten: %v", rec)
			}
			if stored := c.txn("x1"); !proto.Equal(stored, rec) {
				t.Errorf("stored %v, result %v", stored, rec)
			}
			if ids := c.openIDs(); !slices.Equal(ids, []string{"x1"}) || c.openCount() != 1 {
				t.Errorf("a decided txn is open until forgotten: %v (count %d)", ids, c.openCount())
			}
			// Both transfer ids belong to the txn: a Begin of x2 alone is ID_REUSED.
			r := c.apply(mtBegin(mtXfer("x2", "c", "d", 7)))
			if got := mtStatuses(r.GetTransfers()); !slices.Equal(got, []ledgerv1.TransferStatus{mtIDReused}) {
				t.Errorf("x2 reused: %v", r)
			}
			// The same decision again (a retry) answers the record, existed; a different
			// one cannot change it.
			for _, again := range []*raftv1.Command{tc.cmd, mtAbortWith(chain, mtInsufficient, 0), mtDecideWith(mtCommit, chain, mtYesFor(chain)...)} {
				r := c.apply(again)
				if !r.GetExisted() || !proto.Equal(r.GetTxn(), rec) {
					t.Errorf("second decision %v: %v", again, r)
				}
			}
			c.decide(mtForget("x1"))
			if c.openCount() != 0 {
				t.Errorf("forgotten txn still open")
			}
		})
	}
}

func TestDecideCreatesRecordRefusals(t *testing.T) {
	chain := mtChain(mtXfer("x1", "a", "b", 5), mtXfer("x2", "c", "d", 7))
	yes := mtYesFor(chain)
	cases := []struct {
		name string
		cmd  *raftv1.Command
		msg  string
	}{
		{"commit without every vote", mtDecideWith(mtCommit, chain, yes[:3]...), "without a yes vote"},
		{"commit with a no vote", mtDecideWith(mtCommit, chain, append(slices.Clone(yes[:3]),
			&raftv1.Vote{TxnId: "x1", Index: 3, State: raftv1.BranchState_BRANCH_STATE_REFUSED})...), "without a yes vote"},
		{"hold for a transfer not pending", mtDecideWith(mtHold, chain, yes...), "does not fit"},
		{"commit for a pending transfer", mtDecideWith(mtCommit, []*ledgerv1.Transfer{mtPendingXfer("p1", 5, 60)},
			mtYesFor([]*ledgerv1.Transfer{mtPendingXfer("p1", 5, 60)})...), "does not fit"},
		{"no decision", mtDecideWith(mtNone, chain, yes...), "no decision"},
		{"abort without a no vote", mtDecideWith(mtAbort, chain, yes...), "abort without a no vote"},
		{"commit of an unknown txn without transfers", mtDecide("x1", mtCommit, yes...), "unknown txn"},
		{"open chain", &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: &raftv1.DecideTxn{TxnId: "x1",
			Decision: mtAbort, Transfers: []*ledgerv1.Transfer{mtXfer("x1", "a", "b", 5), mtXfer("x2", "c", "d", 7)}}}}, "linked chain"},
		{"txn id is not the first transfer's", &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: &raftv1.DecideTxn{TxnId: "x2",
			Decision: mtAbort, Transfers: chain}}}, "must be its first transfer's id"},
		{"bad txn id", mtAbortCmd("bad id!", mtInsufficient, "", -1), "txn_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newMTCoord(t)
			c.mustRefuse(tc.cmd, tc.msg)
		})
	}
}

func TestDecideIDReuse(t *testing.T) {
	c := newMTCoord(t)
	chain := mtChain(mtXfer("x1", "a", "b", 5), mtXfer("x2", "c", "d", 7))
	rec := c.decide(mtDecideWith(mtCommit, chain, mtYesFor(chain)...))

	// The same txn id with other fields: ID_REUSED, carrying the record that owns it.
	other := mtChain(mtXfer("x1", "a", "b", 6), mtXfer("x2", "c", "d", 7))
	r := c.apply(mtDecideWith(mtCommit, other, mtYesFor(other)...))
	if got := mtStatuses(r.GetTransfers()); !slices.Equal(got, []ledgerv1.TransferStatus{mtIDReused, mtIDReused}) || !proto.Equal(r.GetTxn(), rec) {
		t.Fatalf("reuse of the txn id: %v", r)
	}
	// A chain whose second transfer belongs to x1: ID_REUSED, no record named, nothing stored.
	steal := mtChain(mtXfer("y1", "a", "b", 1), mtXfer("x2", "c", "d", 7))
	r = c.apply(mtDecideWith(mtCommit, steal, mtYesFor(steal)...))
	if got := mtStatuses(r.GetTransfers()); !slices.Equal(got, []ledgerv1.TransferStatus{mtIDReused, mtIDReused}) || r.GetTxn() != nil {
		t.Fatalf("reuse of a member id: %v", r)
	}
	if c.txn("y1") != nil {
		t.Fatalf("a refused chain left a record")
	}
}

func TestInquiryTombstone(t *testing.T) {
	c := newMTCoord(t)
	// A participant asks about x1, which nobody decided: an abort is logged, closed at once.
	tomb := c.decide(mtAbortCmd("x1", ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT, "inquiry", -1))
	if tomb.Decision != mtAbort || !tomb.Forgotten || len(tomb.Transfers) != 0 || tomb.Status != ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT {
		t.Fatalf("tombstone %v", tomb)
	}
	if c.openCount() != 0 || len(c.openIDs()) != 0 {
		t.Fatalf("a tombstone is not open")
	}
	// The router's late commit reads the abort: it cannot contradict the participant.
	chain := []*ledgerv1.Transfer{mtXfer("x1", "a", "b", 5)}
	r := c.apply(mtDecideWith(mtCommit, chain, mtYesFor(chain)...))
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED || !proto.Equal(r.GetTxn(), tomb) || !r.GetExisted() {
		t.Fatalf("late commit: %v", r)
	}
	// A Begin (the driver-run path) reads it too.
	r = c.apply(mtBegin(chain...))
	if !proto.Equal(r.GetTxn(), tomb) || !r.GetExisted() {
		t.Fatalf("late begin: %v", r)
	}
	// A second inquiry answers the same tombstone.
	if again := c.decide(mtAbortCmd("x1", mtInsufficient, "again", -1)); !proto.Equal(again, tomb) {
		t.Fatalf("second inquiry: %v", again)
	}
	// Nothing reads as a transfer.
	if found, nf := c.read("x1"); len(found) != 0 || !slices.Equal(nf, []string{"x1"}) {
		t.Fatalf("tombstone reads as a transfer: %v %v", found, nf)
	}
}

// TestTombstoneUnderAnotherTxnsTransferID: a chain whose first id is the second transfer
// of a committed txn is ID_REUSED, but its branches were prepared under that id; the
// inquiry's tombstone for it must be logged (or they would stay reserved forever) and
// must not disturb the committed txn.
func TestTombstoneUnderAnotherTxnsTransferID(t *testing.T) {
	c := newMTCoord(t)
	chain := mtChain(mtXfer("y1", "a", "b", 5), mtXfer("y2", "c", "d", 7))
	rec := c.decide(mtDecideWith(mtCommit, chain, mtYesFor(chain)...))
	steal := []*ledgerv1.Transfer{mtXfer("y2", "e", "f", 1)}
	r := c.apply(mtDecideWith(mtCommit, steal, mtYesFor(steal)...))
	if got := mtStatuses(r.GetTransfers()); !slices.Equal(got, []ledgerv1.TransferStatus{mtIDReused}) || r.GetTxn() != nil {
		t.Fatalf("reuse: %v", r)
	}
	tomb := c.decide(mtAbortCmd("y2", ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT, "inquiry", -1))
	if tomb.TxnId != "y2" || tomb.Decision != mtAbort || !tomb.Forgotten || len(tomb.Transfers) != 0 {
		t.Fatalf("tombstone %v", tomb)
	}
	if got := c.txn("y1"); !proto.Equal(got, rec) {
		t.Fatalf("the committed txn changed: %v", got)
	}
	found, _ := c.read("y2")
	if found["y2"] == nil || found["y2"].CreditAccountId != "d" {
		t.Fatalf("y2 no longer reads as y1's transfer: %v", found)
	}
}

func TestDecisionFromVotes(t *testing.T) {
	chain := mtChain(mtXfer("x1", "a", "b", 5), mtXfer("x2", "c", "d", 7))
	yes := mtYesFor(chain)
	refused := &raftv1.Vote{TxnId: "x1", Index: 2, State: raftv1.BranchState_BRANCH_STATE_REFUSED, Status: mtInsufficient, Message: "no money"}
	aborted := &raftv1.Vote{TxnId: "x1", Index: 1, State: raftv1.BranchState_BRANCH_STATE_ABORTED}
	cases := []struct {
		name     string
		chain    []*ledgerv1.Transfer
		votes    []*raftv1.Vote
		decision raftv1.TxnDecision
		status   ledgerv1.TransferStatus
		failed   int32
	}{
		{"all yes", chain, yes, mtCommit, 0, -1},
		{"pending, all yes", []*ledgerv1.Transfer{mtPendingXfer("p1", 5, 60)},
			mtYesFor([]*ledgerv1.Transfer{mtPendingXfer("p1", 5, 60)}), mtHold, 0, -1},
		{"a refusal names its transfer", chain, []*raftv1.Vote{yes[0], yes[1], refused, yes[3]}, mtAbort, mtInsufficient, 1},
		{"an aborted branch times out", chain, []*raftv1.Vote{yes[0], aborted, yes[2], yes[3]}, mtAbort,
			ledgerv1.TransferStatus_TRANSFER_STATUS_TIMED_OUT, 0},
		// A missing vote decides nothing: its branch may be prepared.
		{"a missing vote", chain, []*raftv1.Vote{yes[0], yes[1], nil, yes[3]}, mtNone, 0, 0},
		{"a missing vote beside a no", chain, []*raftv1.Vote{yes[0], yes[1], refused, nil}, mtNone, 0, 0},
		{"too few votes", chain, yes[:2], mtNone, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := coordinator.DecisionFromVotes(tc.chain[0].Id, tc.chain, tc.chain, tc.votes)
			if tc.decision == mtNone {
				if d != nil {
					t.Fatalf("decided %v", d)
				}
				return
			}
			if d.Decision != tc.decision || d.Status != tc.status || d.FailedIndex != tc.failed || len(d.Transfers) != len(tc.chain) {
				t.Fatalf("decision %v", d)
			}
			if d.Decision == mtAbort && (len(d.Votes) != 1 || d.Votes[0].GetState() == raftv1.BranchState_BRANCH_STATE_PREPARED) {
				t.Fatalf("an abort carries its no vote: %v", d.Votes)
			}
		})
	}
}

func TestForgetMany(t *testing.T) {
	newDecided := func(c *mtCoord, ids ...string) {
		for _, id := range ids {
			chain := []*ledgerv1.Transfer{mtXfer(id, "a", "b", 1)}
			c.decide(mtDecideWith(mtCommit, chain, mtYesFor(chain)...))
		}
	}
	forget := func(first string, more ...string) *raftv1.Command {
		return &raftv1.Command{Op: &raftv1.Command_ForgetTxn{ForgetTxn: &raftv1.ForgetTxn{TxnId: first, MoreTxnIds: more}}}
	}
	t.Run("every named txn leaves the open set; a repeated id counts once", func(t *testing.T) {
		c := newMTCoord(t)
		newDecided(c, "f1", "f2", "f3", "f4")
		rec := c.decide(forget("f1", "f2", "f3", "f2", "f1"))
		if rec.TxnId != "f1" || !rec.Forgotten {
			t.Fatalf("result %v", rec)
		}
		if ids := c.openIDs(); !slices.Equal(ids, []string{"f4"}) || c.openCount() != 1 {
			t.Fatalf("open %v count %d", ids, c.openCount())
		}
		for _, id := range []string{"f1", "f2", "f3"} {
			if !c.txn(id).Forgotten {
				t.Errorf("%s not forgotten", id)
			}
		}
		// Again, with one already forgotten: fine, nothing changes twice.
		c.decide(forget("f4", "f1"))
		if c.openCount() != 0 {
			t.Fatalf("open count %d", c.openCount())
		}
	})
	t.Run("one unknown or undecided txn: none is forgotten", func(t *testing.T) {
		c := newMTCoord(t)
		newDecided(c, "f1", "f2")
		c.begin(mtXfer("u1", "a", "b", 1)) // begun, undecided
		c.mustRefuse(forget("f1", "f2", "nope"), "unknown txn")
		c.mustRefuse(forget("f1", "u1", "f2"), "not decided")
		if c.openCount() != 3 {
			t.Fatalf("open count %d", c.openCount())
		}
	})
}

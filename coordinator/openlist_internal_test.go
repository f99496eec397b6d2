package coordinator

import (
	"slices"
	"testing"
	"time"

	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// olGroup applies entries (batches of commands) to a MemStore, one Applier each.
type olGroup struct {
	t     *testing.T
	store *ledger.MemStore
	now   int64
}

func (g *olGroup) entry(cmds ...*raftv1.Command) []*raftv1.CommandResult {
	g.t.Helper()
	g.now += int64(time.Millisecond)
	for _, c := range cmds {
		c.TimestampUnixNano = g.now
	}
	a, err := NewApplier(g.store)
	if err != nil {
		g.t.Fatal(err)
	}
	out, err := a.ApplyBatch(&raftv1.Batch{Commands: cmds})
	if err != nil {
		g.t.Fatalf("apply: %v", err)
	}
	g.store.Commit(a.Overlay())
	for i, r := range out.Results {
		if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
			g.t.Fatalf("command %d refused: %s", i, r.GetMessage())
		}
	}
	return out.Results
}

func (g *olGroup) count(prefix byte) int {
	g.t.Helper()
	n := 0
	if err := g.store.Scan([]byte{prefix}, func(_, _ []byte) error { n++; return nil }); err != nil {
		g.t.Fatal(err)
	}
	return n
}

// want checks the open index: lists and stored counts, the per-transaction keys of the
// earlier layout, and what ReadOpen lists (sorted) against the state's open count.
func (g *olGroup) want(lists, counts, perTxn int, open ...string) {
	g.t.Helper()
	if n := g.count(prefixList); n != lists {
		g.t.Errorf("%d open lists, want %d", n, lists)
	}
	if n := g.count(prefixListOpen); n != counts {
		g.t.Errorf("%d list counts, want %d", n, counts)
	}
	if n := g.count(prefixOpen); n != perTxn {
		g.t.Errorf("%d per-txn open keys, want %d", n, perTxn)
	}
	recs, err := ReadOpen(g.store)
	if err != nil {
		g.t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, r.TxnId)
	}
	slices.Sort(got)
	if !slices.Equal(got, open) && !(len(got) == 0 && len(open) == 0) {
		g.t.Errorf("open %v, want %v", got, open)
	}
	a, err := NewApplier(g.store)
	if err != nil {
		g.t.Fatal(err)
	}
	if a.State().OpenCount != uint64(len(open)) {
		g.t.Errorf("open count %d, want %d", a.State().OpenCount, len(open))
	}
}

func olXfer(id string) *ledgerv1.Transfer {
	return &ledgerv1.Transfer{Id: id, DebitAccountId: "a", CreditAccountId: "b", Amount: 1, Currency: "USD"}
}

func olBegin(ts ...*ledgerv1.Transfer) *raftv1.Command {
	for i, t := range ts {
		t.Linked = i < len(ts)-1
	}
	return &raftv1.Command{Op: &raftv1.Command_BeginTxn{BeginTxn: &raftv1.BeginTxn{TxnId: ts[0].Id, Transfers: ts}}}
}

// olFinish is what a router sends after committing every branch: the commit decision
// and the forget in one command.
func olFinish(id string, transfers int) *raftv1.Command {
	d := &raftv1.DecideTxn{TxnId: id, Decision: decCommit, FailedIndex: -1, Forget: true}
	for i := range 2 * transfers {
		d.Votes = append(d.Votes, &raftv1.Vote{TxnId: id, Index: uint32(i), State: raftv1.BranchState_BRANCH_STATE_PREPARED})
	}
	return &raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: d}}
}

func TestOpenLists(t *testing.T) {
	t.Run("one list per entry, closed together or one by one", func(t *testing.T) {
		g := &olGroup{t: t, store: ledger.NewMemStore()}
		g.entry(olBegin(olXfer("t1")), olBegin(olXfer("t2")), olBegin(olXfer("t3")))
		g.entry(olBegin(olXfer("u1")))
		g.want(2, 0, 0, "t1", "t2", "t3", "u1")
		g.entry(olFinish("t2", 1))
		g.want(2, 1, 0, "t1", "t3", "u1")
		g.entry(olFinish("t1", 1), olFinish("u1", 1), olFinish("t3", 1))
		g.want(0, 0, 0)
		// A repeated finish changes nothing.
		g.entry(olFinish("t1", 1))
		g.want(0, 0, 0)
	})
	t.Run("created and closed in the same entry", func(t *testing.T) {
		g := &olGroup{t: t, store: ledger.NewMemStore()}
		g.entry(olBegin(olXfer("a1")), olBegin(olXfer("a2")), olFinish("a1", 1))
		g.want(1, 1, 0, "a2")
		g.entry(olBegin(olXfer("b1")), olFinish("b1", 1))
		g.want(1, 1, 0, "a2")
		g.entry(olFinish("a2", 1))
		g.want(0, 0, 0)
		if rec, err := ReadTxn(g.store, "b1"); err != nil || rec == nil || !rec.Forgotten || rec.Decision != decCommit {
			t.Fatalf("b1: %v, %v", rec, err)
		}
	})
	t.Run("records of the earlier layout", func(t *testing.T) {
		g := &olGroup{t: t, store: ledger.NewMemStore()}
		g.entry(olBegin(olXfer("old")))
		// Rewrite it as the earlier layout stored it: no list, its own open key.
		ov := ledger.NewOverlay(g.store)
		rec, err := ReadTxn(g.store, "old")
		if err != nil {
			t.Fatal(err)
		}
		rec.OpenList = 0
		a := &Applier{ov: ov}
		a.putNew(rec)
		ov.Set(key(prefixOpen, "old"), []byte{1})
		ov.Set(key(prefixIndex, "old"), []byte("old"))
		if err := g.store.Scan([]byte{prefixList}, func(k, _ []byte) error { ov.Delete(k); return nil }); err != nil {
			t.Fatal(err)
		}
		g.store.Commit(ov)
		g.want(0, 0, 1, "old")
		g.entry(olFinish("old", 1))
		g.want(0, 0, 0)
	})
}

// A chain's first transfer is found through the record under its id, later ones through
// the transfer index; a tombstone under an id owns no transfer.
func TestTransferOwners(t *testing.T) {
	g := &olGroup{t: t, store: ledger.NewMemStore()}
	g.entry(olBegin(olXfer("c1"), olXfer("c2"), olXfer("c3")))
	if n := g.count(prefixIndex); n != 2 {
		t.Errorf("%d transfer index keys for a chain of 3, want 2", n)
	}
	// A presumed-abort tombstone under an unknown id.
	abort := &raftv1.DecideTxn{TxnId: "ghost", Decision: decAbort, FailedIndex: -1,
		Votes: []*raftv1.Vote{{TxnId: "ghost", Index: 0, State: raftv1.BranchState_BRANCH_STATE_ABORTED}}}
	g.entry(&raftv1.Command{Op: &raftv1.Command_DecideTxn{DecideTxn: abort}})
	for _, tc := range []struct {
		id    string
		owner string // "" none
	}{{"c1", "c1"}, {"c2", "c1"}, {"c3", "c1"}, {"ghost", ""}, {"nope", ""}} {
		owner, ok, err := ownerOf(g.store, tc.id)
		if err != nil || ok != (tc.owner != "") || owner != tc.owner {
			t.Errorf("owner of %q: %q %v %v, want %q", tc.id, owner, ok, err, tc.owner)
		}
	}
	// Ids taken by the chain are refused to other chains, as first or later transfers.
	for _, ts := range [][]*ledgerv1.Transfer{
		{olXfer("x1"), olXfer("c1")}, {olXfer("x2"), olXfer("c3")}, {olXfer("c2")},
	} {
		r := g.entry(olBegin(ts...))[0]
		if len(r.Transfers) == 0 || r.Transfers[0].Status != stIDReused {
			t.Errorf("begin %s..: %v, want ID_REUSED", ts[0].Id, r)
		}
	}
	// A tombstone's id may still be a later transfer of a new chain.
	g.entry(olBegin(olXfer("y1"), olXfer("ghost")))
	if owner, ok, _ := ownerOf(g.store, "ghost"); !ok || owner != "y1" {
		t.Errorf("owner of ghost after y1: %q %v", owner, ok)
	}
	// A post or void cannot take a transaction's id.
	post := &ledgerv1.Transfer{Id: "c1", PostPendingId: "c2", Amount: 1}
	r := g.entry(&raftv1.Command{Op: &raftv1.Command_ResolvePending{ResolvePending: &raftv1.ResolvePending{Transfer: post}}})[0]
	if len(r.Transfers) != 1 || r.Transfers[0].Status != stIDReused {
		t.Errorf("post with a txn's id: %v", r)
	}
}

// getCounter counts the point reads and the scanned values made through it.
type getCounter struct {
	ledger.Scanner
	gets, scanned int
}

func (c *getCounter) Scan(prefix []byte, fn func(k, v []byte) error) error {
	return c.Scanner.Scan(prefix, func(k, v []byte) error {
		c.scanned++
		return fn(k, v)
	})
}

func (c *getCounter) Get(key []byte) ([]byte, bool, error) {
	c.gets++
	return c.Scanner.Get(key)
}

// readOpen stops at its cap: it lists that many and reads no record, and no list, past
// them.
func TestReadOpenStopsAtItsCap(t *testing.T) {
	g := &olGroup{t: t, store: ledger.NewMemStore()}
	g.entry(olBegin(olXfer("c1")), olBegin(olXfer("c2")), olBegin(olXfer("c3")))
	g.entry(olBegin(olXfer("c4")), olBegin(olXfer("c5")), olBegin(olXfer("c6")))
	one := &getCounter{Scanner: g.store}
	if rec, err := ReadTxn(one, "c1"); err != nil || rec == nil {
		t.Fatalf("c1: %v, %v", rec, err)
	}
	all, err := readOpen(g.store, 100)
	if err != nil || len(all) != 6 {
		t.Fatalf("uncapped: %d records, %v; want 6", len(all), err)
	}
	c := &getCounter{Scanner: g.store}
	recs, err := readOpen(c, 2) // the first list (one entry) holds 3
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("listed %d, want 2", len(recs))
	}
	if c.gets != 2*one.gets {
		t.Errorf("%d point reads for 2 records (%d each): the scan went past its cap", c.gets, one.gets)
	}
	if c.scanned != 1 {
		t.Errorf("scanned %d lists to list 2 records of the first: the scan went past its cap", c.scanned)
	}
}

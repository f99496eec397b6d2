package ledger

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// keysUnder returns the stored keys starting with prefix, in order.
func (s *testShard) keysUnder(prefix byte) [][]byte {
	s.t.Helper()
	var out [][]byte
	if err := s.store.Scan([]byte{prefix}, func(k, _ []byte) error {
		out = append(out, bytes.Clone(k))
		return nil
	}); err != nil {
		s.t.Fatalf("scan %q: %v", prefix, err)
	}
	return out
}

// openBranches returns the ids (txn/index) of the prepared branches ReadOpenWork lists.
func (s *testShard) openBranches() []string {
	s.t.Helper()
	prepared, _, err := ReadOpenWork(s.store)
	if err != nil {
		s.t.Fatalf("read open work: %v", err)
	}
	var out []string
	for _, b := range prepared {
		if b.State != brPrepared {
			s.t.Fatalf("open work lists branch %v in state %s", b.Branch, b.State)
		}
		out = append(out, b.Branch.TxnId+"/"+string(rune('0'+b.Branch.Index)))
	}
	slices.Sort(out)
	return out
}

// commitWithoutLists commits ov with every prepared list deleted.
func (s *testShard) commitWithoutLists(ov *Overlay) {
	for _, k := range s.keysUnder(prefixList) {
		ov.Delete(k)
	}
	s.store.Commit(ov)
}

// wantIndex checks the index keys stored: lists, stored counts and (earlier layout)
// per-branch keys, and what ReadOpenWork lists.
func (s *testShard) wantIndex(lists, counts, perBranch int, open ...string) {
	s.t.Helper()
	if got := len(s.keysUnder(prefixList)); got != lists {
		s.t.Errorf("%d prepared lists stored, want %d", got, lists)
	}
	if got := len(s.keysUnder(prefixListOpen)); got != counts {
		s.t.Errorf("%d list counts stored, want %d", got, counts)
	}
	if got := len(s.keysUnder(prefixPrepared)); got != perBranch {
		s.t.Errorf("%d per-branch index keys stored, want %d", got, perBranch)
	}
	if got := s.openBranches(); !slices.Equal(got, open) && !(len(got) == 0 && len(open) == 0) {
		s.t.Errorf("open branches %v, want %v", got, open)
	}
	tot, err := ReadTotals(s.store)
	if err != nil {
		s.t.Fatalf("totals: %v", err)
	}
	if int(tot.PreparedBranches) != len(open) {
		s.t.Errorf("totals count %d prepared branches, want %d", tot.PreparedBranches, len(open))
	}
	if v := CheckTotals(tot); len(v) > 0 {
		s.t.Errorf("totals: %v", v)
	}
}

func TestPreparedLists(t *testing.T) {
	t.Run("one list per prepare command, counted off as branches resolve", func(t *testing.T) {
		s := newFixtureShard(t) // alice: 100 credits, no overdraft
		vs := s.votes(cmdPrepare(
			branch("p1", 0, "alice", true, 10), branch("p1", 1, "bob", false, 10),
			branch("p2", 0, "alice", true, 500), // refused: not listed
			branch("p3", 0, "alice", true, 5)))
		wantVote(t, vs[2], "p2", 0, brRefused, stInsufficient)
		s.wantIndex(1, 0, 0, "p1/0", "p1/1", "p3/0")
		// A repeat of the prepare answers from the branches and lists nothing new.
		s.votes(cmdPrepare(branch("p1", 0, "alice", true, 10)))
		s.wantIndex(1, 0, 0, "p1/0", "p1/1", "p3/0")
		// Part of the list resolved: its count is stored.
		s.votes(cmdResolve(true, ref("p1", 0, "alice")))
		s.wantIndex(1, 1, 0, "p1/1", "p3/0")
		// A repeat of a resolution counts nothing off.
		s.votes(cmdResolve(true, ref("p1", 0, "alice")))
		s.wantIndex(1, 1, 0, "p1/1", "p3/0")
		// The rest, committed and aborted in one command: list and count go.
		s.votes(cmdResolve(true, ref("p1", 1, "bob")))
		s.votes(cmdResolve(false, ref("p3", 0, "alice"), ref("p2", 0, "alice")))
		s.wantIndex(0, 0, 0)
		s.wantBal("alice", bal{dp: 10, cp: 100})
		s.wantBal("bob", bal{cp: 10})
	})
	t.Run("a list resolved in one command leaves no count behind", func(t *testing.T) {
		s := newFixtureShard(t)
		s.votes(cmdPrepare(branch("q1", 0, "alice", true, 1), branch("q2", 0, "alice", true, 1)))
		s.votes(cmdPrepare(branch("q3", 0, "bob", false, 1)))
		s.wantIndex(2, 0, 0, "q1/0", "q2/0", "q3/0")
		s.votes(cmdResolve(true, ref("q1", 0, "alice"), ref("q3", 0, "bob"), ref("q2", 0, "alice")))
		s.wantIndex(0, 0, 0)
		// Tombstones (abort before prepare) are not listed.
		s.votes(cmdResolve(false, ref("q4", 0, "alice")))
		s.wantIndex(0, 0, 0)
	})
	t.Run("prepare and resolve in one entry", func(t *testing.T) {
		s := newFixtureShard(t)
		a, err := NewApplier(s.store)
		if err != nil {
			t.Fatal(err)
		}
		b := &raftv1.Batch{Commands: []*raftv1.Command{
			cmdPrepare(branch("r1", 0, "alice", true, 1), branch("r2", 0, "alice", true, 2)),
			cmdResolve(true, ref("r1", 0, "alice")),
			cmdResolve(false, ref("r2", 0, "alice")),
		}}
		for _, c := range b.Commands {
			c.TimestampUnixNano = s.now + 1
		}
		if _, err := a.ApplyBatch(b); err != nil {
			t.Fatal(err)
		}
		s.store.Commit(a.Overlay())
		s.wantIndex(0, 0, 0)
		s.wantBal("alice", bal{dp: 1, cp: 100})
	})
	t.Run("branches of the earlier layout are read and resolved", func(t *testing.T) {
		s := newFixtureShard(t)
		s.votes(cmdPrepare(branch("old", 0, "alice", true, 7)))
		// Rewrite it as the earlier layout stored it: no list, a per-branch index key.
		ov := NewOverlay(s.store)
		bk := branchKey(SlotOf("alice", testSlotCount), "old", 0)
		v, _, _ := s.store.Get(bk)
		rec := &raftv1.StoredBranch{}
		if err := rec.UnmarshalVT(v); err != nil {
			t.Fatal(err)
		}
		rec.PreparedList = 0
		ov.Set(bk, mustMarshal(rec))
		ov.Set(preparedKey(bk), bk)
		s.commitWithoutLists(ov)
		s.wantIndex(0, 0, 1, "old/0")
		s.votes(cmdResolve(true, ref("old", 0, "alice")))
		s.wantIndex(0, 0, 0)
		s.wantBal("alice", bal{dp: 7, cp: 100})
	})
	t.Run("a branch naming a missing list fails the apply", func(t *testing.T) {
		s := newFixtureShard(t)
		s.votes(cmdPrepare(branch("lost", 0, "alice", true, 3)))
		s.commitWithoutLists(NewOverlay(s.store))
		a, err := NewApplier(s.store)
		if err != nil {
			t.Fatal(err)
		}
		c := cmdResolve(true, ref("lost", 0, "alice"))
		c.TimestampUnixNano = s.now + 1
		if _, err := a.Apply(c); err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("resolve with its list gone: %v", err)
		}
	})
}

func TestListEncoding(t *testing.T) {
	keys := [][]byte{[]byte("b1"), {}, bytes.Repeat([]byte{'x'}, 300)}
	v := encodeList(keys)
	if n, err := listLen(v); err != nil || n != 3 {
		t.Fatalf("listLen = %d, %v", n, err)
	}
	var got [][]byte
	if err := eachListed(v, func(k []byte) error { got = append(got, k); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || !bytes.Equal(got[0], keys[0]) || len(got[1]) != 0 || !bytes.Equal(got[2], keys[2]) {
		t.Fatalf("decoded %q", got)
	}
	bad := map[string][]byte{
		"empty":         nil,
		"cut short":     v[:len(v)-1],
		"trailing":      append(bytes.Clone(v), 0),
		"count too big": binary.AppendUvarint(nil, 2),
	}
	for name, b := range bad {
		if err := eachListed(b, func([]byte) error { return nil }); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// countingScanner counts the point reads a scan makes.
type countingScanner struct {
	Scanner
	gets int
}

func (c *countingScanner) Get(key []byte) ([]byte, bool, error) {
	c.gets++
	return c.Scanner.Get(key)
}

// ReadOpenWork stops at OpenWorkMax: it lists that many and reads no branch past them.
func TestReadOpenWorkStopsAtItsCap(t *testing.T) {
	s := newFixtureShard(t)
	const extra, perCommand = 25, 1_000
	for n := 0; n < OpenWorkMax+extra; n += perCommand {
		var bs []*raftv1.Branch
		for i := n; i < min(n+perCommand, OpenWorkMax+extra); i++ {
			bs = append(bs, branch(fmt.Sprintf("t%05d", i), 0, "bank", false, 1))
		}
		for _, v := range s.votes(cmdPrepare(bs...)) {
			if v.State != brPrepared {
				t.Fatalf("branch %s/%d: %s", v.TxnId, v.Index, v.State)
			}
		}
	}
	cs := &countingScanner{Scanner: s.store}
	prepared, pending, err := ReadOpenWork(cs)
	if err != nil {
		t.Fatalf("read open work: %v", err)
	}
	if len(prepared) != OpenWorkMax || len(pending) != 0 {
		t.Fatalf("listed %d prepared, %d pending; want %d, 0", len(prepared), len(pending), OpenWorkMax)
	}
	if cs.gets != OpenWorkMax {
		t.Errorf("read %d branches for %d listed: the scan went past its cap", cs.gets, OpenWorkMax)
	}
	tot, err := ReadTotals(s.store) // the totals still count every one
	if err != nil {
		t.Fatal(err)
	}
	if tot.PreparedBranches != OpenWorkMax+extra {
		t.Errorf("totals count %d prepared branches, want %d", tot.PreparedBranches, OpenWorkMax+extra)
	}
}

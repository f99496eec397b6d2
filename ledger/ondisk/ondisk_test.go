package ondisk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Tests of the dragonboat on-disk adapter: durability of the applied index with the
// state, per-entry results, snapshots taken while updates go on, recovery over existing
// state, and determinism across different Update batching.

// --- harness ---

const (
	slotCount = 64
	t0        = int64(1_700_000_000) * int64(time.Second)
)

func allSlots() []uint32 {
	s := make([]uint32, slotCount)
	for i := range s {
		s[i] = uint32(i)
	}
	return s
}

func cmdAssign() *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_AssignSlots{AssignSlots: &raftv1.AssignSlots{
		Epoch: 1, SlotCount: slotCount, Slots: allSlots()}}}
}

func cmdAccounts(accs ...*ledgerv1.Account) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_CreateAccounts{CreateAccounts: &raftv1.CreateAccounts{Accounts: accs}}}
}

func cmdTransfers(ts ...*ledgerv1.Transfer) *raftv1.Command {
	return &raftv1.Command{Op: &raftv1.Command_CreateTransfers{CreateTransfers: &raftv1.CreateTransfers{Transfers: ts}}}
}

func acct(id string) *ledgerv1.Account { return &ledgerv1.Account{Id: id, Currency: "USD"} }

func noOverdraft(id string) *ledgerv1.Account {
	return &ledgerv1.Account{Id: id, Currency: "USD", DebitsMustNotExceedCredits: true}
}

func xfer(id, debit, credit string, amount uint64) *ledgerv1.Transfer {
	return &ledgerv1.Transfer{Id: id, DebitAccountId: debit, CreditAccountId: credit, Amount: amount, Currency: "USD"}
}

// batch encodes the commands of one raft entry, stamped with the logged clock ts.
func batch(t testing.TB, ts int64, cmds ...*raftv1.Command) []byte {
	t.Helper()
	for _, c := range cmds {
		c.TimestampUnixNano = ts
	}
	b, err := proto.Marshal(&raftv1.Batch{Commands: cmds})
	if err != nil {
		t.Fatalf("marshal batch: %v", err)
	}
	return b
}

// entries numbers cmds as raft entries from index first on.
func entries(first uint64, cmds ...[]byte) []sm.Entry {
	out := make([]sm.Entry, len(cmds))
	for i, c := range cmds {
		out[i] = sm.Entry{Index: first + uint64(i), Cmd: c}
	}
	return out
}

// cloneEntries copies entries without their results (Update writes results in place).
func cloneEntries(es []sm.Entry) []sm.Entry {
	out := make([]sm.Entry, len(es))
	for i, e := range es {
		out[i] = sm.Entry{Index: e.Index, Cmd: e.Cmd}
	}
	return out
}

// workload is a deterministic sequence of raft entries (index 1..n): the slot assignment,
// accounts, then random transfers (some to missing accounts, some overdrawing, some
// linked, some repeated) and more accounts, with one to three commands per entry.
func workload(t testing.TB, n int) []sm.Entry {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 11))
	ts := t0
	cmds := [][]byte{batch(t, ts, cmdAssign())}
	accs := []*ledgerv1.Account{}
	for i := 0; i < 12; i++ {
		if i%3 == 0 {
			accs = append(accs, noOverdraft(fmt.Sprintf("acc-%d", i)))
		} else {
			accs = append(accs, acct(fmt.Sprintf("acc-%d", i)))
		}
	}
	nAccounts := len(accs)
	ts += int64(time.Millisecond)
	cmds = append(cmds, batch(t, ts, cmdAccounts(accs...)))
	pick := func() string { return fmt.Sprintf("acc-%d", rng.IntN(nAccounts+2)) } // +2: missing ones
	var last *ledgerv1.Transfer
	for e := len(cmds); e < n; e++ {
		ts += int64(time.Millisecond)
		var cs []*raftv1.Command
		for c := 0; c < 1+rng.IntN(3); c++ {
			switch r := rng.IntN(10); {
			case r == 0:
				id := fmt.Sprintf("acc-%d", nAccounts)
				nAccounts++
				cs = append(cs, cmdAccounts(acct(id)))
			case r == 1 && last != nil:
				cs = append(cs, cmdTransfers(proto.Clone(last).(*ledgerv1.Transfer))) // a retry: EXISTS or the same failure
			default:
				var trs []*ledgerv1.Transfer
				for k := 0; k < 1+rng.IntN(4); k++ {
					d, cr := pick(), pick()
					if d == cr {
						cr = "acc-1"
					}
					tr := xfer(fmt.Sprintf("t-%d-%d-%d", e, c, k), d, cr, 1+uint64(rng.IntN(100)))
					tr.Linked = rng.IntN(4) == 0
					trs = append(trs, tr)
					last = tr
				}
				trs[len(trs)-1].Linked = false
				cs = append(cs, cmdTransfers(trs...))
			}
		}
		cmds = append(cmds, batch(t, ts, cs...))
	}
	return entries(1, cmds...)
}

func openSM(t *testing.T, dir string) (*StateMachine, uint64) {
	t.Helper()
	m := New(dir)
	applied, err := m.Open(make(chan struct{}))
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = m.Close() }) // idempotent
	return m, applied
}

func closeSM(t *testing.T, m *StateMachine) {
	t.Helper()
	if err := m.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// update applies es in Update calls of the given sizes (cycled), checks that each call
// returns its entries with results, and returns them.
func update(t *testing.T, m *StateMachine, es []sm.Entry, sizes ...int) []sm.Entry {
	t.Helper()
	if len(sizes) == 0 {
		sizes = []int{len(es)}
	}
	out := make([]sm.Entry, 0, len(es))
	for i, k := 0, 0; i < len(es); k++ {
		n := min(sizes[k%len(sizes)], len(es)-i)
		got, err := m.Update(es[i : i+n])
		if err != nil {
			t.Fatalf("update entries %d..%d: %v", es[i].Index, es[i+n-1].Index, err)
		}
		if len(got) != n {
			t.Fatalf("update returned %d entries for %d", len(got), n)
		}
		for j := range got {
			if got[j].Index != es[i+j].Index {
				t.Fatalf("update returned entry %d at position %d, want %d", got[j].Index, j, es[i+j].Index)
			}
			if got[j].Result.Value != ResultApplied {
				t.Fatalf("entry %d: result value %d, want %d", got[j].Index, got[j].Result.Value, ResultApplied)
			}
		}
		out = append(out, got...)
		i += n
	}
	return out
}

func lookup(t *testing.T, m *StateMachine, q *raftv1.Query) *raftv1.QueryResult {
	t.Helper()
	r, err := m.Lookup(q)
	if err != nil {
		t.Fatalf("lookup %v: %v", q, err)
	}
	qr, ok := r.(*raftv1.QueryResult)
	if !ok {
		t.Fatalf("lookup answered %T", r)
	}
	return qr
}

// stateHash returns the state hash and the applied index it covers.
func stateHash(t *testing.T, m *StateMachine) ([]byte, uint64) {
	t.Helper()
	r := lookup(t, m, &raftv1.Query{Op: &raftv1.Query_StateHash{StateHash: true}})
	if len(r.GetStateHash()) == 0 {
		t.Fatal("empty state hash")
	}
	return r.GetStateHash(), r.GetAppliedIndex()
}

func wantState(t *testing.T, m *StateMachine, hash []byte, applied uint64) {
	t.Helper()
	h, a := stateHash(t, m)
	if a != applied {
		t.Fatalf("applied index %d, want %d", a, applied)
	}
	if !bytes.Equal(h, hash) {
		t.Fatalf("state hash %x, want %x", h, hash)
	}
}

func accounts(t *testing.T, m *StateMachine, ids ...string) *raftv1.QueryResult {
	t.Helper()
	return lookup(t, m, &raftv1.Query{Op: &raftv1.Query_Accounts{Accounts: &raftv1.IdList{Ids: ids}}})
}

func accountIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("acc-%d", i)
	}
	return ids
}

func decodeResult(t *testing.T, e sm.Entry) *raftv1.BatchResult {
	t.Helper()
	if e.Result.Value != ResultApplied {
		t.Fatalf("entry %d: result value %d, want %d", e.Index, e.Result.Value, ResultApplied)
	}
	r := &raftv1.BatchResult{}
	if err := proto.Unmarshal(e.Result.Data, r); err != nil {
		t.Fatalf("entry %d: result does not decode: %v", e.Index, err)
	}
	return r
}

func mustAccept(t *testing.T, index uint64, r *raftv1.CommandResult) {
	t.Helper()
	if r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
		t.Fatalf("entry %d: command refused: %v %s", index, r.GetRefusal(), r.GetMessage())
	}
}

// --- tests ---

func TestReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "replica") // Open creates it
	m, applied := openSM(t, dir)
	if applied != 0 {
		t.Fatalf("fresh Open returned %d, want 0", applied)
	}
	es := workload(t, 40)
	update(t, m, es, 3, 1, 5, 2)
	if err := m.Sync(); err != nil {
		t.Fatalf("sync: %v", err)
	}
	hash, idx := stateHash(t, m)
	if idx != 40 {
		t.Fatalf("applied index %d, want 40", idx)
	}
	ids := append(accountIDs(20), "missing")
	before := accounts(t, m, ids...)
	if len(before.GetAccounts()) < 12 || len(before.GetNotFound()) == 0 {
		t.Fatalf("before close: %d accounts found, not found %v", len(before.GetAccounts()), before.GetNotFound())
	}
	var moved bool
	for _, a := range before.GetAccounts() {
		moved = moved || a.GetDebitsPosted() != 0
	}
	if !moved {
		t.Fatal("the workload moved no money")
	}
	closeSM(t, m)

	m2, applied := openSM(t, dir)
	if applied != 40 {
		t.Fatalf("reopen: Open returned %d, want 40", applied)
	}
	wantState(t, m2, hash, 40)
	if after := accounts(t, m2, ids...); !proto.Equal(after, before) {
		t.Fatalf("accounts changed across reopen:\nbefore %v\nafter  %v", before, after)
	}

	// Applying goes on from where it stopped, and matches a replica that never closed.
	more := workload(t, 50)[40:]
	update(t, m2, cloneEntries(more), 4)
	ref, _ := openSM(t, t.TempDir())
	update(t, ref, workload(t, 50))
	h, _ := stateHash(t, ref)
	wantState(t, m2, h, 50)
}

// TestCloseWithoutOpen: dragonboat closes a replica whose NodeHost stops while it is
// starting, before Open ran; an error there would make dragonboat panic.
func TestCloseWithoutOpen(t *testing.T) {
	if err := New(t.TempDir()).Close(); err != nil {
		t.Fatalf("close of a replica never opened: %v", err)
	}
}

func TestResults(t *testing.T) {
	m, _ := openSM(t, t.TempDir())
	ts := t0
	next := func() int64 { ts += int64(time.Millisecond); return ts }

	// Before the slot assignment every command is refused, and nothing changes.
	es := update(t, m, entries(1, batch(t, next(), cmdAccounts(acct("early")))))
	r := decodeResult(t, es[0])
	if len(r.GetResults()) != 1 || r.GetResults()[0].GetRefusal() != raftv1.Refusal_REFUSAL_NOT_INITIALIZED {
		t.Fatalf("command before slot assignment: %v, want REFUSAL_NOT_INITIALIZED", r)
	}
	if nf := accounts(t, m, "early").GetNotFound(); len(nf) != 1 {
		t.Fatalf("refused account was created: not found %v", nf)
	}

	garbage := []byte{0x0a, 0x05, 0x01} // field 1, 5 bytes announced, 1 present
	es = update(t, m, entries(2,
		batch(t, next(), cmdAssign()),
		batch(t, next(), cmdAccounts(noOverdraft("alice"), acct("bob"), acct("bob"), &ledgerv1.Account{Id: "bad id!", Currency: "USD"})),
		garbage,
		batch(t, next(),
			cmdTransfers(xfer("t1", "bob", "alice", 100)),
			cmdTransfers(xfer("t2", "ghost", "alice", 5), xfer("t3", "alice", "bob", 500), xfer("t4", "alice", "bob", 40)),
		),
		nil, // an empty entry: a batch of no commands
		batch(t, next(), cmdTransfers(xfer("t1", "bob", "alice", 100), xfer("t1", "bob", "alice", 99))),
	))
	if len(es) != 6 {
		t.Fatalf("%d entries back, want 6", len(es))
	}

	r = decodeResult(t, es[0]) // assign
	mustAccept(t, 2, r.GetResults()[0])
	if r.GetResults()[0].GetEpoch() != 1 {
		t.Fatalf("assign slots: epoch %d, want 1", r.GetResults()[0].GetEpoch())
	}

	r = decodeResult(t, es[1]) // accounts
	mustAccept(t, 3, r.GetResults()[0])
	gotAcc := []ledgerv1.AccountStatus{}
	for _, a := range r.GetResults()[0].GetAccounts() {
		gotAcc = append(gotAcc, a.GetStatus())
	}
	wantAcc := []ledgerv1.AccountStatus{
		ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED, ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED,
		ledgerv1.AccountStatus_ACCOUNT_STATUS_EXISTS, ledgerv1.AccountStatus_ACCOUNT_STATUS_INVALID,
	}
	if fmt.Sprint(gotAcc) != fmt.Sprint(wantAcc) {
		t.Fatalf("account statuses %v, want %v", gotAcc, wantAcc)
	}

	r = decodeResult(t, es[2]) // garbage
	if len(r.GetResults()) != 1 || r.GetResults()[0].GetRefusal() != raftv1.Refusal_REFUSAL_MALFORMED {
		t.Fatalf("undecodable entry: %v, want one REFUSAL_MALFORMED result", r)
	}

	r = decodeResult(t, es[3]) // transfers: applied after the malformed entry, same Update
	if len(r.GetResults()) != 2 {
		t.Fatalf("%d command results, want 2", len(r.GetResults()))
	}
	var gotTr []ledgerv1.TransferStatus
	for _, c := range r.GetResults() {
		mustAccept(t, 5, c)
		for _, x := range c.GetTransfers() {
			gotTr = append(gotTr, x.GetStatus())
		}
	}
	wantTr := []ledgerv1.TransferStatus{
		ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED,
		ledgerv1.TransferStatus_TRANSFER_STATUS_DEBIT_ACCOUNT_NOT_FOUND,
		ledgerv1.TransferStatus_TRANSFER_STATUS_INSUFFICIENT_FUNDS,
		ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED,
	}
	if fmt.Sprint(gotTr) != fmt.Sprint(wantTr) {
		t.Fatalf("transfer statuses %v, want %v", gotTr, wantTr)
	}

	if r = decodeResult(t, es[4]); len(r.GetResults()) != 0 { // empty entry
		t.Fatalf("empty entry: %v, want no results", r)
	}

	r = decodeResult(t, es[5]) // a retry of t1, then t1 with other fields
	mustAccept(t, 7, r.GetResults()[0])
	gotTr = nil
	for _, x := range r.GetResults()[0].GetTransfers() {
		gotTr = append(gotTr, x.GetStatus())
	}
	wantTr = []ledgerv1.TransferStatus{ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS, ledgerv1.TransferStatus_TRANSFER_STATUS_ID_REUSED}
	if fmt.Sprint(gotTr) != fmt.Sprint(wantTr) {
		t.Fatalf("retry statuses %v, want %v", gotTr, wantTr)
	}

	// The state: t1 and t4 moved money, nothing else did.
	got := accounts(t, m, "alice", "bob", "ghost")
	if len(got.GetAccounts()) != 2 || fmt.Sprint(got.GetNotFound()) != "[ghost]" {
		t.Fatalf("accounts: %v", got)
	}
	alice, bob := got.GetAccounts()[0], got.GetAccounts()[1]
	if alice.GetCreditsPosted() != 100 || alice.GetDebitsPosted() != 40 || bob.GetDebitsPosted() != 100 || bob.GetCreditsPosted() != 40 {
		t.Fatalf("balances: alice %v, bob %v", alice, bob)
	}
	tr := lookup(t, m, &raftv1.Query{Op: &raftv1.Query_Transfers{Transfers: &raftv1.IdList{Ids: []string{"t1", "t2", "t3", "t4", "t9"}}}})
	if len(tr.GetTransfers()) != 2 || fmt.Sprint(tr.GetNotFound()) != "[t2 t3 t9]" {
		t.Fatalf("transfers: found %v, not found %v", tr.GetTransfers(), tr.GetNotFound())
	}
	ss := lookup(t, m, &raftv1.Query{Op: &raftv1.Query_ShardState{ShardState: true}})
	if ss.GetAppliedIndex() != 7 || ss.GetShardState().GetEpoch() != 1 || ss.GetShardState().GetSlotCount() != slotCount {
		t.Fatalf("shard state: %v", ss)
	}
	if _, idx := stateHash(t, m); idx != 7 {
		t.Fatalf("applied index %d, want 7 (the malformed and empty entries count)", idx)
	}

	// Bad queries are errors, not panics.
	if _, err := m.Lookup("not a query"); err == nil {
		t.Fatal("lookup of a string: no error")
	}
	if _, err := m.Lookup(&raftv1.Query{}); err == nil {
		t.Fatal("lookup of an empty query: no error")
	}
	// An empty Update is a no-op.
	if got, err := m.Update(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty update: %v, %v", got, err)
	}
	if _, idx := stateHash(t, m); idx != 7 {
		t.Fatalf("applied index %d after an empty update, want 7", idx)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	all := workload(t, 60)
	const k = 35 // entries applied when the snapshot is prepared

	src, _ := openSM(t, t.TempDir())
	update(t, src, cloneEntries(all[:k]), 4)
	prepHash, prepIdx := stateHash(t, src)
	if prepIdx != k {
		t.Fatalf("applied %d, want %d", prepIdx, k)
	}
	ctx, err := src.PrepareSnapshot()
	if err != nil {
		t.Fatalf("prepare snapshot: %v", err)
	}
	// Updates go on between PrepareSnapshot and SaveSnapshot.
	update(t, src, cloneEntries(all[k:]), 3)
	endHash, endIdx := stateHash(t, src)
	if endIdx != 60 || bytes.Equal(endHash, prepHash) {
		t.Fatalf("after more entries: applied %d, hash unchanged %v", endIdx, bytes.Equal(endHash, prepHash))
	}
	var buf bytes.Buffer
	if err := src.SaveSnapshot(ctx, &buf, make(chan struct{})); err != nil {
		t.Fatalf("save snapshot: %v", err)
	}
	snap := buf.Bytes()

	// A replica that applied only the first k entries has the prepared state.
	ref, _ := openSM(t, t.TempDir())
	update(t, ref, cloneEntries(all[:k]))
	wantState(t, ref, prepHash, k)

	// Recover into a fresh replica.
	dir := t.TempDir()
	dst, _ := openSM(t, dir)
	if err := dst.RecoverFromSnapshot(bytes.NewReader(snap), make(chan struct{})); err != nil {
		t.Fatalf("recover: %v", err)
	}
	wantState(t, dst, prepHash, k)
	ids := accountIDs(25)
	if got, want := accounts(t, dst, ids...), accounts(t, ref, ids...); !proto.Equal(got, want) {
		t.Fatalf("recovered accounts differ:\ngot  %v\nwant %v", got, want)
	}

	// Recover into a replica with other state (and a higher applied index): it all goes.
	other, _ := openSM(t, t.TempDir())
	update(t, other, entries(1,
		batch(t, t0, cmdAssign()),
		batch(t, t0+1, cmdAccounts(acct("stranger"), acct("acc-0"))),
		batch(t, t0+2, cmdTransfers(xfer("t-other", "stranger", "acc-0", 7))),
	))
	update(t, other, entries(4, make([][]byte, 100)...)) // applied index 103
	if err := other.RecoverFromSnapshot(bytes.NewReader(snap), make(chan struct{})); err != nil {
		t.Fatalf("recover over state: %v", err)
	}
	wantState(t, other, prepHash, k)
	if nf := accounts(t, other, "stranger").GetNotFound(); len(nf) != 1 {
		t.Fatal("account of the old state survived recovery")
	}
	if tr := lookup(t, other, &raftv1.Query{Op: &raftv1.Query_Transfers{Transfers: &raftv1.IdList{Ids: []string{"t-other"}}}}); len(tr.GetNotFound()) != 1 {
		t.Fatal("transfer of the old state survived recovery")
	}

	// The recovered state is durable, and applying goes on from it.
	closeSM(t, dst)
	dst2, applied := openSM(t, dir)
	if applied != k {
		t.Fatalf("reopen after recovery: Open returned %d, want %d", applied, k)
	}
	wantState(t, dst2, prepHash, k)
	update(t, dst2, cloneEntries(all[k:]), 7)
	wantState(t, dst2, endHash, 60)
	update(t, other, cloneEntries(all[k:]))
	wantState(t, other, endHash, 60)
}

// TestSnapshotConcurrentWithUpdate saves a prepared snapshot while updates run, as
// dragonboat does.
func TestSnapshotConcurrentWithUpdate(t *testing.T) {
	all := workload(t, 80)
	const k = 30
	src, _ := openSM(t, t.TempDir())
	update(t, src, cloneEntries(all[:k]), 5)
	prepHash, _ := stateHash(t, src)
	ctx, err := src.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	saved := make(chan error, 1)
	go func() {
		err := src.SaveSnapshot(ctx, pw, make(chan struct{}))
		_ = pw.CloseWithError(err)
		saved <- err
	}()
	var buf bytes.Buffer
	read := make(chan error, 1)
	go func() { _, err := io.Copy(&buf, pr); read <- err }()
	// Reading the pipe goes on while these updates run.
	for _, e := range all[k:] {
		if _, err := src.Update(cloneEntries([]sm.Entry{e})); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-saved; err != nil {
		t.Fatalf("save: %v", err)
	}
	if err := <-read; err != nil {
		t.Fatalf("read: %v", err)
	}
	dst, _ := openSM(t, t.TempDir())
	if err := dst.RecoverFromSnapshot(&buf, make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	wantState(t, dst, prepHash, k)
}

func TestSnapshotStopped(t *testing.T) {
	// SaveSnapshot looks at done every 4096 keys: make more (a key per account; the
	// entry's events are one key).
	m, _ := openSM(t, t.TempDir())
	accs := make([]*ledgerv1.Account, 5000)
	for i := range accs {
		accs[i] = acct(fmt.Sprintf("acc-%d", i))
	}
	update(t, m, entries(1, batch(t, t0, cmdAssign()), batch(t, t0+1, cmdAccounts(accs...))))
	hash, _ := stateHash(t, m)

	ctx, err := m.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	close(done)
	if err := m.SaveSnapshot(ctx, io.Discard, done); !errors.Is(err, sm.ErrSnapshotStopped) {
		t.Fatalf("save with done closed: %v, want sm.ErrSnapshotStopped (any other error panics the NodeHost)", err)
	}

	// A failing writer (e.g. a broken stream) surfaces its error for dragonboat to judge.
	ctx, err = m.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SaveSnapshot(ctx, failWriter{sm.ErrSnapshotStreaming}, make(chan struct{})); !errors.Is(err, sm.ErrSnapshotStreaming) {
		t.Fatalf("save to a broken stream: %v, want sm.ErrSnapshotStreaming", err)
	}
	if err := m.SaveSnapshot("not a snapshot", io.Discard, make(chan struct{})); err == nil {
		t.Fatal("save with a foreign context: no error")
	}

	// RecoverFromSnapshot looks at done once it has 4 MiB to write: give it more.
	big := bytes.Repeat([]byte{1}, 1<<20)
	var stream []byte
	for i := 0; i < 6; i++ {
		k := fmt.Sprintf("a/big%d", i)
		stream = binary.AppendUvarint(stream, uint64(len(k)))
		stream = append(stream, k...)
		stream = binary.AppendUvarint(stream, uint64(len(big)))
		stream = append(stream, big...)
	}
	stream = binary.AppendUvarint(stream, 0)
	if err := m.RecoverFromSnapshot(bytes.NewReader(stream), done); !errors.Is(err, sm.ErrSnapshotStopped) {
		t.Fatalf("recover with done closed: %v, want sm.ErrSnapshotStopped", err)
	}
	wantState(t, m, hash, 2) // stopped before writing anything

	// Closing with no snapshot left open works (SaveSnapshot released its views).
	closeSM(t, m)
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestRecoverTruncatedSnapshot(t *testing.T) {
	src, _ := openSM(t, t.TempDir())
	update(t, src, workload(t, 20))
	ctx, err := src.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := src.SaveSnapshot(ctx, &buf, make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	dst, _ := openSM(t, t.TempDir())
	err = dst.RecoverFromSnapshot(bytes.NewReader(buf.Bytes()[:buf.Len()-1]), make(chan struct{}))
	if err == nil {
		t.Fatal("recover from a truncated snapshot: no error")
	}
	if errors.Is(err, sm.ErrSnapshotStopped) {
		t.Fatal("a truncated snapshot reported as stopped")
	}
}

func TestReplicasDeterministic(t *testing.T) {
	all := workload(t, 120)
	splits := [][]int{
		{1},          // one entry per Update
		{120},        // everything in one Update
		{7, 1, 3, 2}, // irregular
		{16},
	}
	type replica struct {
		m      *StateMachine
		hashes map[uint64][]byte // after each Update
		res    []sm.Entry
	}
	reps := make([]*replica, len(splits))
	for i, sizes := range splits {
		m, _ := openSM(t, t.TempDir())
		r := &replica{m: m, hashes: map[uint64][]byte{}}
		es := cloneEntries(all)
		for j, k := 0, 0; j < len(es); k++ {
			n := min(sizes[k%len(sizes)], len(es)-j)
			r.res = append(r.res, update(t, m, es[j:j+n])...)
			h, idx := stateHash(t, m)
			if idx != es[j+n-1].Index {
				t.Fatalf("split %v: applied %d, want %d", sizes, idx, es[j+n-1].Index)
			}
			r.hashes[idx] = h
			j += n
		}
		reps[i] = r
	}
	base := reps[0]
	for i, r := range reps[1:] {
		compared := 0
		for idx, h := range r.hashes {
			if !bytes.Equal(h, base.hashes[idx]) {
				t.Fatalf("split %v: state hash at index %d differs from one entry per Update", splits[i+1], idx)
			}
			compared++
		}
		if compared == 0 {
			t.Fatal("nothing compared")
		}
		for j := range r.res {
			if !bytes.Equal(r.res[j].Result.Data, base.res[j].Result.Data) {
				t.Fatalf("split %v: result of entry %d differs", splits[i+1], r.res[j].Index)
			}
		}
	}
	// The workload exercised what it should.
	var created, rejected int
	for _, e := range base.res {
		for _, c := range decodeResult(t, e).GetResults() {
			for _, x := range c.GetTransfers() {
				if x.GetStatus() == ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED {
					created++
				} else {
					rejected++
				}
			}
		}
	}
	if created == 0 || rejected == 0 {
		t.Fatalf("workload: %d transfers created, %d rejected; want both", created, rejected)
	}
}

// TestFactory checks the constructor dragonboat calls.
func TestFactory(t *testing.T) {
	dir := t.TempDir()
	built := Factory(dir, nil)(3, 5)
	m, ok := built.(*StateMachine)
	if !ok {
		t.Fatalf("factory built %T", built)
	}
	if want := filepath.Join(dir, "shard-3-replica-5"); m.Dir() != want {
		t.Fatalf("dir %q, want %q", m.Dir(), want)
	}
	if idx, err := m.Open(nil); err != nil || idx != 0 {
		t.Fatalf("open: %d, %v", idx, err)
	}
	closeSM(t, m)
}

// TestResultReplica: only the replica named by Batch.result_replica_id encodes an
// entry's results (its node's proposer waits for them); with none named, every replica
// does. The state is the same on every replica either way.
func TestResultReplica(t *testing.T) {
	dir := t.TempDir()
	cmds := func(result uint64) []sm.Entry {
		var es []sm.Entry
		for i, c := range []*raftv1.Command{cmdAssign(), cmdAccounts(acct("a"), acct("b")), cmdTransfers(xfer("t1", "a", "b", 5))} {
			c.TimestampUnixNano = t0 + int64(i)
			b, err := proto.Marshal(&raftv1.Batch{Commands: []*raftv1.Command{c}, ResultReplicaId: result})
			if err != nil {
				t.Fatal(err)
			}
			es = append(es, sm.Entry{Index: uint64(i + 1), Cmd: b})
		}
		return es
	}
	var hashes [][]byte
	for _, tc := range []struct {
		replica, named uint64
		encodes        bool
	}{{1, 1, true}, {2, 1, false}, {3, 0, true}} {
		m := Factory(dir, nil)(7, tc.replica).(*StateMachine)
		if _, err := m.Open(nil); err != nil {
			t.Fatalf("open replica %d: %v", tc.replica, err)
		}
		got := update(t, m, cmds(tc.named))
		for _, e := range got {
			if has := len(e.Result.Data) > 0; has != tc.encodes {
				t.Fatalf("replica %d, entry %d naming replica %d: results encoded %v, want %v", tc.replica, e.Index, tc.named, has, tc.encodes)
			}
			if tc.encodes {
				for _, r := range decodeResult(t, e).Results {
					mustAccept(t, e.Index, r)
				}
			}
		}
		h, applied := stateHash(t, m)
		if applied != 3 {
			t.Fatalf("replica %d: applied %d, want 3", tc.replica, applied)
		}
		hashes = append(hashes, h)
		closeSM(t, m)
	}
	for i := 1; i < len(hashes); i++ {
		if !bytes.Equal(hashes[i], hashes[0]) {
			t.Fatalf("replica state %d differs: %x vs %x", i, hashes[i], hashes[0])
		}
	}
}

// TestRetriesAfterReopenAndRecovery: the apply path answers lookups of transfer ids and
// branches that mostly do not exist from an in-memory filter; a replica reopened, or
// rebuilt from a snapshot, must still see what it stored before (a retried transfer is
// EXISTS, a retried prepare reserves nothing twice), so the filter is rebuilt from the
// store each time.
func TestRetriesAfterReopenAndRecovery(t *testing.T) {
	prepare := func() *raftv1.Command {
		return &raftv1.Command{Op: &raftv1.Command_Prepare{Prepare: &raftv1.PrepareBranches{Branches: []*raftv1.Branch{
			{TxnId: "txn-1", Index: 0, AccountId: "alice", Debit: true, Amount: 7, Currency: "USD"}}}}}
	}
	retry := func(t *testing.T, m *StateMachine, index uint64) {
		t.Helper()
		out := update(t, m, entries(index,
			batch(t, t0+int64(index), cmdTransfers(xfer("t-1", "bank", "alice", 100))),
			batch(t, t0+int64(index)+1, prepare())))
		tr := decodeResult(t, out[0]).GetResults()[0]
		mustAccept(t, index, tr)
		if s := tr.GetTransfers()[0].GetStatus(); s != ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS {
			t.Fatalf("entry %d: retried transfer %v, want EXISTS", index, s)
		}
		v := decodeResult(t, out[1]).GetResults()[0].GetVotes()
		if len(v) != 1 || v[0].GetState() != raftv1.BranchState_BRANCH_STATE_PREPARED {
			t.Fatalf("entry %d: retried prepare voted %v, want the branch as prepared", index+1, v)
		}
		acc := accounts(t, m, "alice").GetAccounts()[0]
		if acc.GetCreditsPosted() != 100 || acc.GetDebitsPending() != 7 {
			t.Fatalf("after the retries alice holds %v, want credits posted 100, debits pending 7", acc)
		}
	}

	dir := filepath.Join(t.TempDir(), "replica")
	m, _ := openSM(t, dir)
	out := update(t, m, entries(1,
		batch(t, t0, cmdAssign()),
		batch(t, t0+1, cmdAccounts(acct("bank"), acct("alice"))),
		batch(t, t0+2, cmdTransfers(xfer("t-1", "bank", "alice", 100))),
		batch(t, t0+3, prepare())))
	for _, e := range out {
		mustAccept(t, e.Index, decodeResult(t, e).GetResults()[0])
	}
	// In the same replica the retries hit keys the filter was given at commit.
	retry(t, m, 5)
	if err := m.Sync(); err != nil {
		t.Fatal(err)
	}
	ctx, err := m.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	if err := m.SaveSnapshot(ctx, &snap, make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	closeSM(t, m)

	// Reopened: the filter is rebuilt from the store.
	m2, applied := openSM(t, dir)
	retry(t, m2, applied+1)

	// Recovered from a snapshot into a replica that had applied other things: the
	// filter is rebuilt from the recovered state.
	m3, _ := openSM(t, t.TempDir())
	update(t, m3, entries(1, batch(t, t0, cmdAssign())))
	if err := m3.RecoverFromSnapshot(&snap, make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	_, applied3 := stateHash(t, m3)
	retry(t, m3, applied3+1)
}

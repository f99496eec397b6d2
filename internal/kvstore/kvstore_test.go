package kvstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
)

// --- helpers ---

// kvs is a Writes source: a map written in key order.
type kvs map[string]string

func (m kvs) Writes(fn func(k, v []byte) error) error {
	w := make(strWrites, len(m))
	for k, v := range m {
		w[k] = []byte(v)
	}
	return w.Writes(fn)
}

// failingWrites writes one key, then fails.
type failingWrites struct{ err error }

func (f failingWrites) Writes(fn func(k, v []byte) error) error {
	if err := fn([]byte("a/partial"), []byte("x")); err != nil {
		return err
	}
	return f.err
}

// testHasher is a length-prefixed sha256 over key/value pairs.
type testHasher struct{ b bytes.Buffer }

func (h *testHasher) Add(k, v []byte) {
	h.b.Write(binary.AppendUvarint(nil, uint64(len(k))))
	h.b.Write(k)
	h.b.Write(binary.AppendUvarint(nil, uint64(len(v))))
	h.b.Write(v)
}

func (h *testHasher) Sum() []byte { s := sha256.Sum256(h.b.Bytes()); return s[:] }

func newTestHasher() Hasher { return &testHasher{} }

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustCommit(t *testing.T, s *Store, w Writes, applied uint64) {
	t.Helper()
	if err := s.Commit(w, applied); err != nil {
		t.Fatalf("commit %d: %v", applied, err)
	}
}

func wantGet(t *testing.T, s interface {
	Get([]byte) ([]byte, bool, error)
}, key, want string, wantOK bool) {
	t.Helper()
	v, ok, err := s.Get([]byte(key))
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	if ok != wantOK || string(v) != want {
		t.Fatalf("get %q = (%q, %v), want (%q, %v)", key, v, ok, want, wantOK)
	}
}

func wantApplied(t *testing.T, s *Store, want uint64) {
	t.Helper()
	got, err := s.Applied()
	if err != nil {
		t.Fatalf("applied: %v", err)
	}
	if got != want {
		t.Fatalf("applied = %d, want %d", got, want)
	}
}

// contents returns every key/value of the store (applied index included).
func contents(t *testing.T, s *Store) map[string]string {
	t.Helper()
	sn := s.NewSnapshot()
	defer sn.Close()
	out := map[string]string{}
	if err := sn.Iterate(func(k, v []byte) error { out[string(k)] = string(v); return nil }); err != nil {
		t.Fatalf("iterate: %v", err)
	}
	return out
}

func hashOf(t *testing.T, s *Store) []byte {
	t.Helper()
	sn := s.NewSnapshot()
	defer sn.Close()
	h, err := sn.Hash(newTestHasher)
	if err != nil {
		t.Fatalf("hash: %v", err)
	}
	return h
}

func saveAll(t *testing.T, s *Store) []byte {
	t.Helper()
	sn := s.NewSnapshot()
	defer sn.Close()
	var buf bytes.Buffer
	if err := sn.Save(&buf, make(chan struct{})); err != nil {
		t.Fatalf("save: %v", err)
	}
	return buf.Bytes()
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// stream encodes records the way Save does, with or without the end marker.
func stream(recs [][2][]byte, end bool) []byte {
	var b []byte
	for _, r := range recs {
		b = binary.AppendUvarint(b, uint64(len(r[0])))
		b = append(b, r[0]...)
		b = binary.AppendUvarint(b, uint64(len(r[1])))
		b = append(b, r[1]...)
	}
	if end {
		b = binary.AppendUvarint(b, 0)
	}
	return b
}

// --- tests ---

func TestCommitGetApplied(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	wantApplied(t, s, 0)
	wantGet(t, s, "a/1", "", false)

	mustCommit(t, s, kvs{"a/1": "one", "a/2": "two"}, 5)
	wantGet(t, s, "a/1", "one", true)
	wantGet(t, s, "a/2", "two", true)
	wantGet(t, s, "a/3", "", false)
	wantApplied(t, s, 5)

	// Get returns a copy: changing it does not change the store.
	v, _, err := s.Get([]byte("a/1"))
	if err != nil {
		t.Fatal(err)
	}
	copy(v, "XXX")
	wantGet(t, s, "a/1", "one", true)

	// A commit with no writes still moves the applied index; overwrites replace.
	mustCommit(t, s, nil, 6)
	wantApplied(t, s, 6)
	mustCommit(t, s, kvs{"a/2": "deux"}, 7)
	wantGet(t, s, "a/2", "deux", true)
	wantApplied(t, s, 7)

	if err := s.Sync(); err != nil {
		t.Fatalf("sync: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}

	s2 := openStore(t, dir)
	wantApplied(t, s2, 7)
	wantGet(t, s2, "a/1", "one", true)
	wantGet(t, s2, "a/2", "deux", true)
}

// Stores sharing a block cache keep their data apart (the cache is keyed by store and
// file), and the cache outlives the caller's reference until the last store closes.
func TestSharedCache(t *testing.T) {
	cache := NewCache(8 << 20)
	var stores []*Store
	for i := range 3 {
		s, err := Open(t.TempDir(), cache)
		if err != nil {
			t.Fatalf("open store %d: %v", i, err)
		}
		stores = append(stores, s)
		// Same keys, different values: each must read back its own.
		mustCommit(t, s, kvs{"a/1": fmt.Sprint("v", i), "a/2": fmt.Sprint("w", i)}, uint64(i+1))
		if err := s.Sync(); err != nil { // to sstables: reads go through the block cache
			t.Fatalf("sync store %d: %v", i, err)
		}
	}
	cache.Close() // the stores hold their own references
	for i, s := range stores {
		wantGet(t, s, "a/1", fmt.Sprint("v", i), true)
		wantGet(t, s, "a/2", fmt.Sprint("w", i), true)
		wantApplied(t, s, uint64(i+1))
		if err := s.Close(); err != nil {
			t.Fatalf("close store %d: %v", i, err)
		}
	}
}

func TestCommitWritesErrorWritesNothing(t *testing.T) {
	s := openStore(t, t.TempDir())
	mustCommit(t, s, kvs{"a/1": "one"}, 3)
	boom := errors.New("boom")
	err := s.Commit(failingWrites{err: boom}, 4)
	if !errors.Is(err, boom) {
		t.Fatalf("commit with failing writes: %v, want %v", err, boom)
	}
	wantApplied(t, s, 3)
	wantGet(t, s, "a/partial", "", false)
}

func TestAppliedRejectsBadEncoding(t *testing.T) {
	s := openStore(t, t.TempDir())
	// Recover can install any bytes under the applied key.
	data := stream([][2][]byte{{AppliedKey, []byte{1, 2, 3}}}, true)
	if err := s.Recover(bytes.NewReader(data), make(chan struct{})); err != nil {
		t.Fatalf("recover: %v", err)
	}
	if _, err := s.Applied(); err == nil {
		t.Fatal("applied index of 3 bytes: no error")
	}
}

func TestSnapshotIsPointInTime(t *testing.T) {
	s := openStore(t, t.TempDir())
	mustCommit(t, s, kvs{"a/1": "one", "a/2": "two"}, 1)
	before := hashOf(t, s)
	sn := s.NewSnapshot()
	defer sn.Close()

	mustCommit(t, s, kvs{"a/1": "uno", "a/3": "three"}, 2)

	wantGet(t, sn, "a/1", "one", true)
	wantGet(t, sn, "a/3", "", false)
	wantGet(t, s, "a/1", "uno", true)
	v, ok, err := sn.Get(AppliedKey)
	if err != nil || !ok || binary.BigEndian.Uint64(v) != 1 {
		t.Fatalf("snapshot applied = (%x, %v, %v), want 1", v, ok, err)
	}
	h, err := sn.Hash(newTestHasher)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h, before) {
		t.Fatal("snapshot hash changed after a later commit")
	}
	if bytes.Equal(hashOf(t, s), before) {
		t.Fatal("store hash did not change after a commit")
	}

	var keys []string
	if err := sn.Iterate(func(k, _ []byte) error { keys = append(keys, string(k)); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []string{"a/1", "a/2", string(AppliedKey)}
	if fmt.Sprint(keys) != fmt.Sprint(want) {
		t.Fatalf("iterate keys %q, want %q (in order)", keys, want)
	}

	// Iterate stops at the first error and returns it.
	stop := errors.New("stop")
	n := 0
	if err := sn.Iterate(func(_, _ []byte) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("iterate with error: %v after %d calls", err, n)
	}
}

func TestHashDependsOnContent(t *testing.T) {
	a := openStore(t, t.TempDir())
	b := openStore(t, t.TempDir())
	mustCommit(t, a, kvs{"a/1": "one"}, 1)
	mustCommit(t, b, kvs{"a/1": "one"}, 1)
	if !bytes.Equal(hashOf(t, a), hashOf(t, b)) {
		t.Fatal("equal stores hash differently")
	}
	mustCommit(t, b, kvs{"a/1": "onE"}, 1)
	if bytes.Equal(hashOf(t, a), hashOf(t, b)) {
		t.Fatal("different values hash the same")
	}
}

func TestSaveRecoverRoundTrip(t *testing.T) {
	src := openStore(t, t.TempDir())
	w := kvs{}
	for i := 0; i < 300; i++ {
		w[fmt.Sprintf("a/%04d", i)] = fmt.Sprintf("value-%d", i)
	}
	w["b/big"] = string(bytes.Repeat([]byte{7}, 200_000))
	w["b/empty"] = ""
	mustCommit(t, src, w, 41)
	data := saveAll(t, src)
	want := contents(t, src)
	wantHash := hashOf(t, src)

	// Into an empty store.
	dir := t.TempDir()
	dst := openStore(t, dir)
	if err := dst.Recover(bytes.NewReader(data), make(chan struct{})); err != nil {
		t.Fatalf("recover: %v", err)
	}
	if !equalMaps(contents(t, dst), want) {
		t.Fatal("recovered contents differ")
	}
	wantApplied(t, dst, 41)

	// Into a store with other state, a higher applied index included: all of it goes.
	other := openStore(t, t.TempDir())
	mustCommit(t, other, kvs{"a/0001": "stale", "c/only-here": "x", "m": "state", "\x01low": "y"}, 99)
	if err := other.Recover(bytes.NewReader(data), make(chan struct{})); err != nil {
		t.Fatalf("recover over state: %v", err)
	}
	if !equalMaps(contents(t, other), want) || !bytes.Equal(hashOf(t, other), wantHash) {
		t.Fatal("recovering over existing state left old keys")
	}
	wantApplied(t, other, 41)
	// Point reads see through the range deletion that cleared the old state.
	rd := other.NewPointReader()
	wantGet(t, rd, "a/0001", "value-1", true)
	wantGet(t, rd, "c/only-here", "", false)
	wantGet(t, rd, "m", "", false)
	if err := rd.Close(); err != nil {
		t.Fatal(err)
	}

	// Durable across reopen.
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	dst = openStore(t, dir)
	wantApplied(t, dst, 41)
	if !bytes.Equal(hashOf(t, dst), wantHash) {
		t.Fatal("hash changed across reopen")
	}

	// An empty store's snapshot is just the end marker and recovers to nothing.
	empty := openStore(t, t.TempDir())
	if err := other.Recover(bytes.NewReader(saveAll(t, empty)), make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	if c := contents(t, other); len(c) != 0 {
		t.Fatalf("recovered an empty snapshot, %d keys remain", len(c))
	}
	wantApplied(t, other, 0)
}

func TestSaveStopped(t *testing.T) {
	s := openStore(t, t.TempDir())
	w := kvs{}
	for i := 0; i < 5000; i++ { // Save looks at done every 4096 keys
		w[fmt.Sprintf("a/%05d", i)] = "v"
	}
	mustCommit(t, s, w, 1)
	sn := s.NewSnapshot()
	defer sn.Close()
	done := make(chan struct{})
	close(done)
	err := sn.Save(io.Discard, done)
	if err == nil {
		t.Fatal("save with done closed: no error")
	}
	if !errors.Is(err, ErrStopped) {
		t.Fatalf("save with done closed: %v, want ErrStopped", err)
	}
	// The view is still usable.
	if err := sn.Save(io.Discard, make(chan struct{})); err != nil {
		t.Fatalf("save after stop: %v", err)
	}
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }

func TestSaveWriterError(t *testing.T) {
	s := openStore(t, t.TempDir())
	mustCommit(t, s, kvs{"a/1": "one"}, 1)
	sn := s.NewSnapshot()
	defer sn.Close()
	streaming := errors.New("streaming failed")
	if err := sn.Save(errWriter{streaming}, make(chan struct{})); !errors.Is(err, streaming) {
		t.Fatalf("save to a failing writer: %v, want %v", err, streaming)
	}
}

func TestRecoverStopped(t *testing.T) {
	s := openStore(t, t.TempDir())
	mustCommit(t, s, kvs{"a/keep": "old"}, 7)
	before := contents(t, s)

	// Recover looks at done once a batch holds 4 MiB.
	big := bytes.Repeat([]byte{1}, 1<<20)
	var recs [][2][]byte
	for i := 0; i < 6; i++ {
		recs = append(recs, [2][]byte{[]byte(fmt.Sprintf("a/big%d", i)), big})
	}
	recs = append(recs, [2][]byte{AppliedKey, binary.BigEndian.AppendUint64(nil, 50)})
	data := stream(recs, true)

	done := make(chan struct{})
	close(done)
	err := s.Recover(bytes.NewReader(data), done)
	if err == nil {
		t.Fatal("recover with done closed: no error")
	}
	if !errors.Is(err, ErrStopped) {
		t.Fatalf("recover with done closed: %v, want ErrStopped", err)
	}
	// Stopped before its first commit: the old state is intact and the store usable.
	if !equalMaps(contents(t, s), before) {
		t.Fatal("stopped recover changed the state")
	}
	if err := s.Recover(bytes.NewReader(data), make(chan struct{})); err != nil {
		t.Fatalf("recover after stop: %v", err)
	}
	wantApplied(t, s, 50)
	wantGet(t, s, "a/keep", "", false)
	if v, ok, err := s.Get([]byte("a/big5")); err != nil || !ok || !bytes.Equal(v, big) {
		t.Fatalf("a/big5 after recover: ok %v err %v len %d", ok, err, len(v))
	}
}

func TestRecoverTruncated(t *testing.T) {
	src := openStore(t, t.TempDir())
	w := kvs{}
	for i := 0; i < 50; i++ {
		w[fmt.Sprintf("a/%03d", i)] = fmt.Sprintf("value-%d", i)
	}
	mustCommit(t, src, w, 12)
	data := saveAll(t, src)

	dst := openStore(t, t.TempDir())
	mustCommit(t, dst, kvs{"a/old": "x"}, 3)
	for _, n := range []int{0, 1, 2, len(data) / 3, len(data) / 2, len(data) - 2, len(data) - 1} {
		if err := dst.Recover(bytes.NewReader(data[:n]), make(chan struct{})); err == nil {
			t.Fatalf("recover from %d of %d bytes: no error", n, len(data))
		}
		// A failed recover of a small stream commits nothing.
		wantApplied(t, dst, 3)
		wantGet(t, dst, "a/old", "x", true)
	}
	if err := dst.Recover(bytes.NewReader(data), make(chan struct{})); err != nil {
		t.Fatalf("recover from the whole stream: %v", err)
	}
	wantApplied(t, dst, 12)
	if !bytes.Equal(hashOf(t, dst), hashOf(t, src)) {
		t.Fatal("hash differs after recovering the whole stream")
	}
}

func TestRecoverRejectsOversizedRecords(t *testing.T) {
	s := openStore(t, t.TempDir())
	// A key longer than the limit.
	data := binary.AppendUvarint(nil, snapshotKeyBytesMax+1)
	if err := s.Recover(bytes.NewReader(data), make(chan struct{})); err == nil {
		t.Fatal("oversized key: no error")
	}
	// A value longer than the limit.
	data = binary.AppendUvarint(nil, 1)
	data = append(data, 'k')
	data = binary.AppendUvarint(data, snapshotValBytesMax+1)
	if err := s.Recover(bytes.NewReader(data), make(chan struct{})); err == nil {
		t.Fatal("oversized value: no error")
	}
}

// writesFunc is a Writes source from a function (a nil value deletes).
type writesFunc func(fn func(k, v []byte) error) error

func (f writesFunc) Writes(fn func(k, v []byte) error) error { return f(fn) }

// TestPointReader checks the bloom-filtered point reads against DB.Get: present, absent,
// deleted, a key that prefixes another, keys in the memtable, in flushed sstables and in
// the bottom level after a compaction, and the view's point in time.
func TestPointReader(t *testing.T) {
	s := openStore(t, t.TempDir())
	const n = 2000
	key := func(i int) string { return fmt.Sprintf("t/%05d", i) }
	all := kvs{}
	for i := 0; i < n; i += 2 { // even keys exist, odd ones never do
		all[key(i)] = fmt.Sprintf("v%d", i)
	}
	all["ab"] = "short"
	all["abc"] = "long"
	mustCommit(t, s, all, 1)
	check := func(stage string) {
		t.Helper()
		rd := s.NewPointReader()
		defer func() {
			if err := rd.Close(); err != nil {
				t.Fatalf("%s: close: %v", stage, err)
			}
		}()
		for i := 0; i < n; i++ {
			want, ok := all[key(i)]
			wantGet(t, rd, key(i), want, ok)
			wantGet(t, s, key(i), want, ok)
		}
		wantGet(t, rd, "ab", "short", true)
		wantGet(t, rd, "abc", "long", true)
		wantGet(t, rd, "a", "", false)
		wantGet(t, rd, "abcd", "", false)
		wantGet(t, rd, "t/", "", false)
	}
	check("memtable")
	if err := s.Sync(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	check("flushed")
	if err := s.db.Compact([]byte{0}, []byte{0xff}, true); err != nil {
		t.Fatalf("compact: %v", err)
	}
	check("compacted")

	// Deletes and overwrites in the memtable over values in sstables.
	mustCommit(t, s, writesFunc(func(fn func(k, v []byte) error) error {
		if err := fn([]byte(key(0)), nil); err != nil {
			return err
		}
		return fn([]byte(key(2)), []byte("new"))
	}), 2)
	delete(all, key(0))
	all[key(2)] = "new"
	check("overwritten")

	// A reader does not see what is committed after it was made.
	rd := s.NewPointReader()
	mustCommit(t, s, kvs{key(1): "late"}, 3)
	wantGet(t, rd, key(1), "", false)
	wantGet(t, rd, key(2), "new", true)
	if err := rd.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	all[key(1)] = "late"
	check("late")
}

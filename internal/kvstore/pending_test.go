package kvstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble"
)

// inPebble reads pebble itself, under the write-behind layer.
func inPebble(t *testing.T, s *Store, key string) (string, bool) {
	t.Helper()
	v, closer, err := s.db.Get([]byte(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return "", false
	}
	if err != nil {
		t.Fatalf("pebble get %q: %v", key, err)
	}
	defer closer.Close()
	return string(v), true
}

func pebbleApplied(t *testing.T, s *Store) uint64 {
	t.Helper()
	v, ok := inPebble(t, s, string(AppliedKey))
	if !ok {
		return 0
	}
	return binary.BigEndian.Uint64([]byte(v))
}

func TestWriteBehindPendingUntilRead(t *testing.T) {
	s := openStore(t, t.TempDir())
	mustCommit(t, s, kvs{"a/1": "one", "a/2": "two"}, 1)
	mustCommit(t, s, writesFunc(func(fn func(k, v []byte) error) error {
		if err := fn([]byte("a/1"), nil); err != nil { // deleted while pending
			return err
		}
		return fn([]byte("a/2"), []byte("deux")) // overwritten while pending
	}), 2)
	mustCommit(t, s, kvs{"a/3": "three"}, 3)

	// Small commits stay pending: pebble has none of them yet.
	for _, k := range []string{"a/1", "a/2", "a/3"} {
		if v, ok := inPebble(t, s, k); ok {
			t.Fatalf("%s in pebble before any read: %q", k, v)
		}
	}
	if got := pebbleApplied(t, s); got != 0 {
		t.Fatalf("pebble applied %d before any read, want 0", got)
	}

	// The apply path reads through the pending writes without flushing them.
	ar := s.NewApplyReader()
	wantGet(t, ar, "a/1", "", false)
	wantGet(t, ar, "a/2", "deux", true)
	wantGet(t, ar, "a/3", "three", true)
	wantGet(t, ar, "a/4", "", false)
	if err := ar.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := inPebble(t, s, "a/3"); ok {
		t.Fatal("an apply reader flushed the pending writes")
	}

	// Any other reader flushes first: one batch, the last applied index with it.
	rd := s.NewPointReader()
	wantGet(t, rd, "a/1", "", false)
	wantGet(t, rd, "a/2", "deux", true)
	wantGet(t, rd, "a/3", "three", true)
	if err := rd.Close(); err != nil {
		t.Fatal(err)
	}
	if v, ok := inPebble(t, s, "a/2"); !ok || v != "deux" {
		t.Fatalf("a/2 in pebble after a read: %q %v, want deux", v, ok)
	}
	if _, ok := inPebble(t, s, "a/1"); ok {
		t.Fatal("a/1 (deleted while pending) reached pebble")
	}
	if got := pebbleApplied(t, s); got != 3 {
		t.Fatalf("pebble applied %d after a flush, want 3", got)
	}
}

func TestWriteBehindReadersFlush(t *testing.T) {
	for _, tc := range []struct {
		name string
		read func(t *testing.T, s *Store) string // a/1 as the reader sees it
	}{
		{"Get", func(t *testing.T, s *Store) string {
			v, _, err := s.Get([]byte("a/1"))
			if err != nil {
				t.Fatal(err)
			}
			return string(v)
		}},
		{"Applied", func(t *testing.T, s *Store) string {
			if _, err := s.Applied(); err != nil {
				t.Fatal(err)
			}
			v, _ := inPebble(t, s, "a/1")
			return v
		}},
		{"Snapshot", func(t *testing.T, s *Store) string {
			sn := s.NewSnapshot()
			defer sn.Close()
			v, _, err := sn.Get([]byte("a/1"))
			if err != nil {
				t.Fatal(err)
			}
			return string(v)
		}},
		{"Sync", func(t *testing.T, s *Store) string {
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			v, _ := inPebble(t, s, "a/1")
			return v
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			mustCommit(t, s, kvs{"a/1": "one"}, 7)
			if got := tc.read(t, s); got != "one" {
				t.Fatalf("a/1 = %q, want one", got)
			}
			if got := pebbleApplied(t, s); got != 7 {
				t.Fatalf("pebble applied %d, want 7", got)
			}
		})
	}
}

func TestWriteBehindCloseKeepsPending(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	mustCommit(t, s, kvs{"a/1": "one"}, 4)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir)
	wantApplied(t, s2, 4)
	wantGet(t, s2, "a/1", "one", true)
}

func TestWriteBehindLimits(t *testing.T) {
	s := openStore(t, t.TempDir())
	// One commit past twice the key limit: Commit flushes before it returns.
	big := kvs{}
	for i := 0; i < 2*pendingKeysMax; i++ {
		big[fmt.Sprintf("b/%06d", i)] = "x"
	}
	mustCommit(t, s, big, 1)
	if v, ok := inPebble(t, s, "b/000000"); !ok || v != "x" {
		t.Fatalf("past twice the limit, b/000000 in pebble: %q %v", v, ok)
	}
	if got := pebbleApplied(t, s); got != 1 {
		t.Fatalf("pebble applied %d, want 1", got)
	}
	// Past the limit once: the background flusher takes it (waited for through Sync's
	// flush, which runs after it).
	half := kvs{}
	for i := 0; i < pendingKeysMax; i++ {
		half[fmt.Sprintf("c/%06d", i)] = "y"
	}
	mustCommit(t, s, half, 2)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if v, ok := inPebble(t, s, "c/000000"); !ok || v != "y" {
		t.Fatalf("c/000000 in pebble: %q %v", v, ok)
	}
	if got := pebbleApplied(t, s); got != 2 {
		t.Fatalf("pebble applied %d, want 2", got)
	}
}

// An apply reader made before a flush still sees every write the flush moved to pebble,
// whenever its own pebble view is taken; readers made by other goroutines (queries)
// flush concurrently with the commits. Run with -race.
func TestApplyReaderAcrossConcurrentFlushes(t *testing.T) {
	s := openStore(t, t.TempDir())
	const rounds = 300
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				sn := s.NewSnapshot()
				v, ok, err := sn.Get(AppliedKey)
				if err != nil {
					t.Error(err)
				}
				if ok {
					a := binary.BigEndian.Uint64(v)
					if a < last {
						t.Errorf("applied index went back: %d after %d", a, last)
					}
					last = a
				}
				if err := sn.Close(); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	key := func(i int) string { return fmt.Sprintf("k/%05d", i) }
	for i := 1; i <= rounds; i++ {
		ar := s.NewApplyReader()
		// Every earlier key, its latest value: odd rounds overwrite the key before.
		for j := 1; j < i; j++ {
			want := fmt.Sprintf("v%d", j)
			if j%2 == 0 && j+1 < i {
				want = fmt.Sprintf("w%d", j+1)
			}
			wantGet(t, ar, key(j), want, true)
		}
		wantGet(t, ar, key(i), "", false)
		if err := ar.Close(); err != nil {
			t.Fatal(err)
		}
		w := kvs{key(i): fmt.Sprintf("v%d", i)}
		if i%2 == 1 && i > 1 {
			w[key(i-1)] = fmt.Sprintf("w%d", i)
		}
		mustCommit(t, s, w, uint64(i))
	}
	close(stop)
	wg.Wait()
	wantApplied(t, s, rounds)
}

// strWrites is a StringWrites, as a ledger.Overlay is (nil value: delete).
type strWrites map[string][]byte

func (w strWrites) Writes(fn func(k, v []byte) error) error {
	keys := make([]string, 0, len(w))
	for k := range w {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := fn([]byte(k), w[k]); err != nil {
			return err
		}
	}
	return nil
}

func (w strWrites) EachWriteString(fn func(k string, v []byte)) {
	for k, v := range w {
		fn(k, v)
	}
}

func (w strWrites) Len() int { return len(w) }

func TestCommitLargeBatchDirect(t *testing.T) {
	s := openStore(t, t.TempDir())
	mustCommit(t, s, strWrites{"a/1": []byte("old"), "a/2": []byte("two")}, 1) // small: pending
	if _, ok := inPebble(t, s, "a/1"); ok {
		t.Fatal("a small batch went to pebble")
	}
	big := strWrites{"a/1": []byte("new"), "a/2": nil}
	for i := 0; len(big) < directKeysMin; i++ {
		big[fmt.Sprintf("d/%05d", i)] = []byte("x")
	}
	mustCommit(t, s, big, 2)
	// In pebble as soon as Commit returns, over the pending writes before it.
	if v, ok := inPebble(t, s, "a/1"); !ok || v != "new" {
		t.Fatalf("a/1 in pebble: %q %v, want new", v, ok)
	}
	if v, ok := inPebble(t, s, "a/2"); ok {
		t.Fatalf("a/2 (deleted by the large batch) in pebble: %q", v)
	}
	if v, ok := inPebble(t, s, "d/00000"); !ok || v != "x" {
		t.Fatalf("d/00000 in pebble: %q %v", v, ok)
	}
	if got := pebbleApplied(t, s); got != 2 {
		t.Fatalf("pebble applied %d, want 2", got)
	}
	mustCommit(t, s, strWrites{"a/1": []byte("newer")}, 3) // small again: pending
	ar := s.NewApplyReader()
	wantGet(t, ar, "a/1", "newer", true)
	wantGet(t, ar, "a/2", "", false)
	wantGet(t, ar, "d/00001", "x", true)
	if err := ar.Close(); err != nil {
		t.Fatal(err)
	}
	wantApplied(t, s, 3)
	wantGet(t, s, "a/1", "newer", true)
}

package diskrsm

import (
	"fmt"
	"testing"

	"github.com/shardledger/shardledger/ledger"
)

// memScan is a store holding keys (a ledger.MemStore, which scans in key order).
func memScan(keys ...string) *ledger.MemStore {
	st := ledger.NewMemStore()
	ov := ledger.NewOverlay(st)
	for _, k := range keys {
		ov.Set([]byte(k), []byte("v"))
	}
	st.Commit(ov)
	return st
}

// TestAbsentFilterNeverHidesAStoredKey is the property the apply path relies on: a key
// added (or found by a rebuild) is never answered absent, across segment growth; keys
// of families it does not cover are never answered absent; false positives stay rare.
func TestAbsentFilterNeverHidesAStoredKey(t *testing.T) {
	f := newAbsentFilter([]byte{'b', 't'}, FilterKeysMax)
	const n = 5 * filterSegKeysFirst // several segments
	for i := 0; i < n; i++ {
		f.add([]byte(fmt.Sprintf("b\x00\x00\x01txn-%d\x00\x00\x00\x00\x01", i)))
		if i%3 == 0 {
			f.add([]byte(fmt.Sprintf("t-%d", i)))
		}
	}
	if len(f.segs) < 3 {
		t.Fatalf("%d keys made %d segments, want several", f.keys, len(f.segs))
	}
	for i := 0; i < n; i++ {
		if k := []byte(fmt.Sprintf("b\x00\x00\x01txn-%d\x00\x00\x00\x00\x01", i)); f.absent(k) {
			t.Fatalf("stored key %q answered absent", k)
		}
		if k := []byte(fmt.Sprintf("t-%d", i)); i%3 == 0 && f.absent(k) {
			t.Fatalf("stored key %q answered absent", k)
		}
	}
	if f.absent([]byte("a-never-covered")) || f.absent(nil) {
		t.Fatal("a key outside the covered families answered absent")
	}
	fp := 0
	const probes = 100_000
	for i := 0; i < probes; i++ {
		if !f.absent([]byte(fmt.Sprintf("b-new-%d", i))) {
			fp++
		}
	}
	// About 0.3 % per full segment; a handful of segments stays well under 3 %.
	if rate := float64(fp) / probes; rate > 0.03 {
		t.Fatalf("false positive rate %.4f over %d new keys, want < 0.03", rate, probes)
	}
	t.Logf("%d keys in %d segments (%d KiB); false positives %.3f %%", f.keys, len(f.segs), f.bytes()/1024, 100*float64(fp)/probes)
}

// TestAbsentFilterTurnsOffWhenFull: past its limit the filter answers nothing absent
// (a key left out would be a false "absent"), until reset and rebuilt.
func TestAbsentFilterTurnsOffWhenFull(t *testing.T) {
	f := newAbsentFilter([]byte{'x'}, 100)
	for i := 0; i < 100; i++ {
		f.add([]byte(fmt.Sprintf("x%d", i)))
	}
	// 100 keys in a segment for 65,536: a false positive is all but impossible.
	if f.off || !f.absent([]byte("x-new")) {
		t.Fatalf("before its limit: off %v, a new key absent %v", f.off, f.absent([]byte("x-new")))
	}
	f.add([]byte("x-one-too-many"))
	if !f.off {
		t.Fatal("still on past its limit")
	}
	for _, k := range []string{"x-one-too-many", "x-new", "x5"} {
		if f.absent([]byte(k)) {
			t.Fatalf("off, yet %q answered absent", k)
		}
	}
	// A rebuild from a store with fewer keys turns it on again with what the store has.
	store := memScan("x1", "x2", "y1")
	if err := f.rebuild(store); err != nil {
		t.Fatal(err)
	}
	if f.off || f.keys != 2 || f.absent([]byte("x1")) || f.absent([]byte("x2")) {
		t.Fatalf("after rebuild: off %v, %d keys", f.off, f.keys)
	}
	if !f.absent([]byte("x-one-too-many")) {
		t.Fatal("a key not in the rebuilt store is not absent (2 keys in the filter)")
	}
}

// TestAbsentFilterRebuildScansOnlyItsFamilies: a rebuild adds the store's covered keys
// and forgets what was added before (a recovered snapshot replaces the state).
func TestAbsentFilterRebuildScansOnlyItsFamilies(t *testing.T) {
	f := newAbsentFilter([]byte{'b', 'i'}, FilterKeysMax)
	f.add([]byte("b-before-recovery"))
	store := memScan("b1", "i7", "a-account", "t-not-covered")
	if err := f.rebuild(store); err != nil {
		t.Fatal(err)
	}
	if f.keys != 2 {
		t.Fatalf("rebuild added %d keys, want 2 (b1, i7)", f.keys)
	}
	for _, k := range []string{"b1", "i7"} {
		if f.absent([]byte(k)) {
			t.Fatalf("stored %q answered absent after the rebuild", k)
		}
	}
	// Two keys in a segment for 65,536: a false positive is all but impossible.
	if !f.absent([]byte("b-before-recovery")) {
		t.Fatal("a key added before the rebuild is still present: the filter did not reset")
	}
}

package kvstore

import (
	"fmt"
	"testing"
)

// TestCacheMetrics checks that a shared cache reports the stores open with it (by
// directory, in order), that their figures follow what was written and flushed, and
// that a closed store leaves the report.
func TestCacheMetrics(t *testing.T) {
	cache := NewCache(8 << 20)
	defer cache.Close()
	a, err := Open(t.TempDir()+"/a", cache)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(t.TempDir()+"/b", cache)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, ms := cache.Metrics(); len(ms) != 2 || ms[0].Files != 0 || ms[0].FlushedBytes != 0 {
		t.Fatalf("fresh stores: %+v", ms)
	}
	w := kvs{}
	for i := range 1000 {
		w[fmt.Sprintf("k%05d", i)] = fmt.Sprintf("value-%d", i)
	}
	mustCommit(t, a, w, 7)
	if err := a.Sync(); err != nil { // a memtable flush: one sstable in L0
		t.Fatal(err)
	}
	wantGet(t, a, "k00042", "value-42", true)
	cm, ms := cache.Metrics()
	if len(ms) != 2 {
		t.Fatalf("%d stores reported, want 2", len(ms))
	}
	if ms[0].Dir > ms[1].Dir {
		t.Fatalf("stores reported out of order: %q, %q", ms[0].Dir, ms[1].Dir)
	}
	am := ms[0]
	if am.Dir != a.dir {
		am = ms[1]
	}
	if am.Dir != a.dir {
		t.Fatalf("stores reported %q, %q; want %q among them", ms[0].Dir, ms[1].Dir, a.dir)
	}
	if am.Files < 1 || am.L0Files < 1 || am.L0Sublevels < 1 || am.SizeBytes == 0 || am.Flushes < 1 || am.FlushedBytes == 0 {
		t.Fatalf("after a flush: %+v", am)
	}
	if cm.Hits+cm.Misses == 0 {
		t.Fatalf("cache metrics after a read from an sstable: %+v", cm)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ms := cache.Metrics(); len(ms) != 1 || ms[0].Dir != b.dir {
		t.Fatalf("after closing a: %+v", ms)
	}
}

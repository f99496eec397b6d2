package ledger

import "testing"

// TestOverlayMarkRollbackRelease checks the journal: writes under a mark roll back to
// what they replaced (including deletions and keys new in the overlay), writes before
// the mark stay, and a released mark leaves later writes out of any journal.
func TestOverlayMarkRollbackRelease(t *testing.T) {
	base := NewMemStore()
	seed := NewOverlay(base)
	seed.Set([]byte("a"), []byte("base-a"))
	seed.Set([]byte("b"), []byte("base-b"))
	base.Commit(seed)

	o := NewOverlay(base)
	o.Set([]byte("a"), []byte("before"))
	mark := o.Mark()
	o.Set([]byte("a"), []byte("under-mark"))
	o.Delete([]byte("b"))
	o.Set([]byte("c"), []byte("new"))
	o.Rollback(mark)
	want := map[string]string{"a": "before", "b": "base-b", "c": ""}
	for k, v := range want {
		got, ok, err := o.Get([]byte(k))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != v || ok != (v != "") {
			t.Fatalf("after rollback %q = (%q, %v), want %q", k, got, ok, v)
		}
	}
	if o.Len() != 1 {
		t.Fatalf("after rollback the overlay holds %d writes, want 1", o.Len())
	}
	o.Release(mark)
	if len(o.journal) != 0 || o.marked {
		t.Fatalf("released: journal %d entries, marked %v", len(o.journal), o.marked)
	}
	o.Set([]byte("d"), []byte("unjournaled"))
	if len(o.journal) != 0 {
		t.Fatalf("a write with no mark held was journaled")
	}
}

// TestOverlayCold: SetCold writes like Set and marks the key cold; a later Set of the
// key in the same overlay makes it an ordinary write again.
func TestOverlayCold(t *testing.T) {
	o := NewOverlay(NewMemStore())
	o.SetCold([]byte("b/1"), []byte("final"))
	o.Set([]byte("a/1"), []byte("hot"))
	if v, ok, _ := o.Get([]byte("b/1")); !ok || string(v) != "final" {
		t.Fatalf("cold write reads (%q, %v)", v, ok)
	}
	if !o.Cold([]byte("b/1")) || o.Cold([]byte("a/1")) || o.Cold([]byte("absent")) {
		t.Fatalf("cold marks: b/1 %v, a/1 %v, absent %v", o.Cold([]byte("b/1")), o.Cold([]byte("a/1")), o.Cold([]byte("absent")))
	}
	o.Set([]byte("b/1"), []byte("again"))
	if o.Cold([]byte("b/1")) {
		t.Fatal("a Set after SetCold left the key cold")
	}
}

// TestOverlayWritesInKeyOrder checks that Writes hands over every write once, deletions
// as nil, in ascending key order (what makes the adapter's memtable inserts cheap), and
// that EachWrite hands over the same set.
func TestOverlayWritesInKeyOrder(t *testing.T) {
	o := NewOverlay(NewMemStore())
	keys := []string{"t\x00\x00\x01\x07x", "a\x00\x00\x00\x02b", "z/applied", "b\x00\x00\x0f\xffq", "a\x00\x00\x00\x02a", "e\x00\x00\x00\x00\x00\x00\x00\x09"}
	for _, k := range keys {
		o.Set([]byte(k), []byte("v:"+k))
	}
	o.Delete([]byte("w\x00gone"))
	o.Set([]byte("t\x00\x00\x01\x07x"), []byte("second write wins"))

	var got []string
	if err := o.Writes(func(k, v []byte) error {
		got = append(got, string(k))
		switch string(k) {
		case "w\x00gone":
			if v != nil {
				t.Errorf("deletion handed over as %q, want nil", v)
			}
		case "t\x00\x00\x01\x07x":
			if string(v) != "second write wins" {
				t.Errorf("rewritten key handed over as %q", v)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(keys)+1 {
		t.Fatalf("Writes handed over %d keys, want %d: %q", len(got), len(keys)+1, got)
	}
	for i := 1; i < len(got); i++ {
		if got[i-1] >= got[i] {
			t.Fatalf("Writes out of order at %d: %q then %q", i, got[i-1], got[i])
		}
	}
	each := map[string]bool{}
	if err := o.EachWrite(func(k, _ []byte) error { each[string(k)] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, k := range got {
		if !each[k] {
			t.Fatalf("EachWrite left out %q", k)
		}
	}
	if len(each) != len(got) {
		t.Fatalf("EachWrite handed over %d keys, Writes %d", len(each), len(got))
	}
}

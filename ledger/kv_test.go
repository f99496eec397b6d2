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

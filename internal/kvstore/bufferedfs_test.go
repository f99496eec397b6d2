package kvstore

import (
	"bytes"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
)

// countingFile counts the writes that reach the file.
type countingFile struct {
	vfs.File
	writes int
}

func (c *countingFile) Write(p []byte) (int, error) { c.writes++; return c.File.Write(p) }

type countingFS struct {
	vfs.FS
	files []*countingFile
}

func (fs *countingFS) Create(name string) (vfs.File, error) {
	f, err := fs.FS.Create(name)
	if err != nil {
		return nil, err
	}
	c := &countingFile{File: f}
	fs.files = append(fs.files, c)
	return c, nil
}

// Writes of any size reach the file whole and in order, in few large writes; whatever
// sizes or syncs the file sees everything written before it.
func TestBufferedFile(t *testing.T) {
	under := &countingFS{FS: vfs.NewMem()}
	fs := bufferedFS{under}
	f, err := fs.Create("f")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	var want []byte
	writes := 0
	for len(want) < 3*writeBufferBytes {
		n := r.IntN(8 << 10)
		if writes%50 == 49 {
			n = writeBufferBytes + r.IntN(1000) // larger than the buffer: written through
		}
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		if m, err := f.Write(p); err != nil || m != n {
			t.Fatalf("write %d: %d, %v", n, m, err)
		}
		want = append(want, p...)
		writes++
	}
	if under.files[0].writes >= writes/10 {
		t.Errorf("%d writes reached the file for %d made", under.files[0].writes, writes)
	}
	st, err := f.Stat()
	if err != nil || st.Size() != int64(len(want)) {
		t.Fatalf("stat before sync: %v %v, want size %d", st, err, len(want))
	}
	if _, err := f.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	want = append(want, "more"...)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	want = append(want, "last"...)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	rf, err := under.Open("f")
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	all, err := io.ReadAll(rf)
	if err != nil || !bytes.Equal(all, want) {
		t.Fatalf("file holds %d bytes (%v), want the %d written", len(all), err, len(want))
	}
}

// A store on the buffered FS reopens with what it flushed.
func TestBufferedStoreReopens(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := s.db.NewBatch()
	val := bytes.Repeat([]byte("v"), 1000)
	for i := range 5000 {
		if err := b.Set([]byte{byte(i >> 8), byte(i)}, val, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, i := range []int{0, 2500, 4999} {
		v, closer, err := s.db.Get([]byte{byte(i >> 8), byte(i)})
		if err != nil || !bytes.Equal(v, val) {
			t.Fatalf("key %d after reopen: %v", i, err)
		}
		closer.Close()
	}
}

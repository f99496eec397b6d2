package kvstore

import (
	"fmt"
	"os"

	"github.com/cockroachdb/pebble/vfs"
)

// writeBufferBytes is how much a file pebble writes (an sstable of a flush or a
// compaction, the MANIFEST) gathers before it goes to the OS in one write.
//
// Why: this pebble's sstable writer buffers its output in a bufio.Writer of 4 KiB
// unless the file can flush itself, so every flush and compaction made a write system
// call per 4 KiB. On these VMs a system call is dear: in a profile of batched
// cross-shard load those writes were 10 % of ledgerd's CPU.
const writeBufferBytes = 256 << 10

// syncEveryBytesNever turns off pebble's periodic syncs while a file is written
// (Options.BytesPerSync): they sync through the file descriptor, past the buffer, so a
// buffered file hides its descriptor (see bufferedFile) and pebble would fall back to a
// full Sync every BytesPerSync. Files are still synced whole before pebble relies on
// them (an sstable before the MANIFEST names it; the MANIFEST on every change).
const syncEveryBytesNever = 1 << 62

// Instead, a buffered file starts the write-back of what it wrote every
// writeBackEveryBytes, as pebble did (sync_file_range, Linux only; a hint, not a
// sync), so the final sync of a large file does not flush it all at once while the
// raft log's fsyncs wait behind it.
const (
	writeBackEveryBytes = 512 << 10
	writeBackLagBytes   = 1 << 20 // the last MiB is left alone: it may be written again
)

// bufferedFS is an FS whose created files buffer their writes (writeBufferBytes).
// Files opened for reading are the FS's own.
type bufferedFS struct{ vfs.FS }

// Create creates a file whose writes are buffered.
func (fs bufferedFS) Create(name string) (vfs.File, error) {
	f, err := fs.FS.Create(name)
	if err != nil {
		return nil, err
	}
	b := &bufferedFile{File: f, buf: make([]byte, 0, writeBufferBytes)}
	if d, ok := f.(interface{ Fd() uintptr }); ok {
		b.fd = d.Fd()
	}
	return b, nil
}

// bufferedFile gathers writes and hands them to the file in large pieces. Everything
// that reads, sizes, syncs or closes the file writes the buffer first, so only the
// write calls change. It has no Fd method on purpose: a caller syncing through the
// descriptor would miss what is still buffered.
type bufferedFile struct {
	vfs.File
	buf         []byte
	fd          uintptr // 0: no write-back hints
	written     int64   // bytes handed to the file
	writtenBack int64   // bytes whose write-back was started
}

func (f *bufferedFile) Write(p []byte) (int, error) {
	if len(f.buf)+len(p) > cap(f.buf) {
		if err := f.flush(); err != nil {
			return 0, err
		}
	}
	if len(p) >= cap(f.buf) {
		n, err := f.File.Write(p)
		f.wrote(n)
		return n, err
	}
	f.buf = append(f.buf, p...)
	return len(p), nil
}

// wrote counts n bytes handed to the file and starts the write-back of the older ones
// every writeBackEveryBytes.
func (f *bufferedFile) wrote(n int) {
	f.written += int64(n)
	to := f.written - writeBackLagBytes
	to -= to % (4 << 10)
	if f.fd == 0 || to-f.writtenBack < writeBackEveryBytes {
		return
	}
	if err := startWriteBack(f.fd, f.writtenBack, to-f.writtenBack); err != nil {
		f.fd = 0 // not supported here: only a hint
		return
	}
	f.writtenBack = to
}

func (f *bufferedFile) flush() error {
	for p := f.buf; len(p) > 0; {
		n, err := f.File.Write(p)
		f.wrote(n)
		if err != nil {
			copy(f.buf, p[n:]) // keep what was not written
			f.buf = f.buf[:len(p)-n]
			return fmt.Errorf("write buffered %d bytes: %w", len(p), err)
		}
		p = p[n:]
	}
	f.buf = f.buf[:0]
	return nil
}

func (f *bufferedFile) Sync() error {
	if err := f.flush(); err != nil {
		return err
	}
	return f.File.Sync()
}

func (f *bufferedFile) Close() error {
	err := f.flush()
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	return err
}

func (f *bufferedFile) Stat() (os.FileInfo, error) {
	if err := f.flush(); err != nil {
		return nil, err
	}
	return f.File.Stat()
}

func (f *bufferedFile) Read(p []byte) (int, error) {
	if err := f.flush(); err != nil {
		return 0, err
	}
	return f.File.Read(p)
}

func (f *bufferedFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.flush(); err != nil {
		return 0, err
	}
	return f.File.ReadAt(p, off)
}

// Package kvstore is the pebble storage shared by the on-disk state machines: one pebble
// database per replica, the applied index stored with every batch of state changes
// (small commits are kept pending and reach pebble in larger batches: pending.go),
// streaming snapshots and a state hash.
package kvstore

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/bloom"
	"github.com/cockroachdb/pebble/vfs"
)

// AppliedKey holds the raft index of the last applied entry, written in the same batch
// as the state it produced.
var AppliedKey = []byte("z/applied")

// ErrStopped is returned (possibly wrapped) by Save and Recover when done is closed. The
// on-disk state machine must turn it into dragonboat's ErrSnapshotStopped: any other
// error from SaveSnapshot or RecoverFromSnapshot stops the NodeHost with a panic.
var ErrStopped = errors.New("snapshot stopped")

// Limits.
const (
	// CacheBytesDefault is the block cache of a store opened without a shared Cache.
	CacheBytesDefault = 32 << 20
	bloomBitsPerKey   = 10
	memTableBytes     = 8 << 20
	// L0 sublevels that start a compaction out of L0 (pebble's default is 4). Keys
	// arrive in random order (ids, accounts), so every flush overlaps all of the base
	// level and each L0 compaction rewrites it: waiting for 16 sublevels rewrites it a
	// quarter as often. Point reads pay with more bloom filter checks in L0. Measured
	// (cross-shard, 1,000 transfers per request): about -5 % CPU per transfer, +6 %
	// throughput; 32 measured the same as 16.
	l0CompactionSublevels = 16
	l0StopWritesSublevels = 3 * l0CompactionSublevels
	snapshotBatchBytes    = 4 << 20
	snapshotKeyBytesMax   = 1 << 16
	snapshotValBytesMax   = 64 << 20
)

// Store is one replica's pebble database.
type Store struct {
	db    *pebble.DB
	wb    writeBehind // committed writes not yet in pebble (pending.go)
	dir   string
	cache *Cache // the shared cache it is registered with (Cache.Metrics); nil: none
}

// Cache is a block cache (uncompressed sstable blocks) that several stores share: a
// node gives all its replicas one, so the groups that are read most get most of it.
type Cache struct {
	c      *pebble.Cache
	mu     sync.Mutex
	stores map[*Store]struct{} // open with it (Metrics)
}

// NewCache returns a cache of at most bytes (allocated as blocks are cached). Close it
// once no more stores will be opened with it; stores open then keep their own
// reference until they close.
func NewCache(bytes int64) *Cache {
	return &Cache{c: pebble.NewCache(bytes), stores: make(map[*Store]struct{})}
}

// Close drops the caller's reference (stores still open keep theirs).
func (c *Cache) Close() { c.c.Unref() }

// Open opens (or creates) the database in dir with its block cache in cache; nil gives
// it a cache of its own of CacheBytesDefault.
func Open(dir string, cache *Cache) (*Store, error) {
	var pc *pebble.Cache
	if cache == nil {
		pc = pebble.NewCache(CacheBytesDefault)
		defer pc.Unref() // the store holds its own reference
	} else {
		pc = cache.c
	}
	// Bloom filters on every level: the apply path looks up many keys that do not exist
	// yet (a new transfer id, branch or transaction), and without a filter each such miss
	// reads a block of every sstable whose key range covers it.
	levels := make([]pebble.LevelOptions, 7)
	for i := range levels {
		levels[i] = pebble.LevelOptions{FilterPolicy: bloom.FilterPolicy(bloomBitsPerKey), FilterType: pebble.TableFilter}
	}
	db, err := pebble.Open(dir, &pebble.Options{
		Comparer:              pointComparer(),
		Cache:                 pc,
		Levels:                levels,
		MemTableSize:          memTableBytes,
		L0CompactionThreshold: l0CompactionSublevels,
		L0StopWritesThreshold: l0StopWritesSublevels,
		MaxOpenFiles:          256,
		Logger:                quietLogger{},
		FS:                    bufferedFS{vfs.Default},
		BytesPerSync:          syncEveryBytesNever,
		// The raft log is the write-ahead log of a replicated state machine: after a
		// crash, Open returns the applied index of the last flushed state and dragonboat
		// replays the entries after it. Sync flushes before dragonboat relies on the
		// state (snapshots, log compaction), so pebble's own WAL is pure overhead.
		DisableWAL: true,
	})
	if err != nil {
		return nil, fmt.Errorf("open pebble %s: %w", dir, err)
	}
	s := &Store{db: db, dir: dir, cache: cache}
	s.startWriteBehind()
	if cache != nil {
		cache.add(s)
	}
	return s, nil
}

// pointComparer is pebble's default (bytewise) comparer, same name, so existing stores
// open unchanged, with Split set to the whole key: a key is its own prefix, so
// SeekPrefixGE consults the bloom filters, which were always built on whole keys. In
// this pebble version DB.Get never consults them (it seeks every level), which made each
// lookup of an absent key (a new transfer id, branch, txn) read a block of every level.
func pointComparer() *pebble.Comparer {
	c := *pebble.DefaultComparer
	c.Split = func(a []byte) int { return len(a) }
	return &c
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...interface{}) {}
func (quietLogger) Fatalf(format string, args ...interface{}) {
	panic(fmt.Sprintf("pebble: "+format, args...))
}

// Get implements ledger.Reader: (nil, false, nil) for a missing key; the value is a copy.
func (s *Store) Get(key []byte) ([]byte, bool, error) {
	if err := s.flush(); err != nil {
		return nil, false, err
	}
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("pebble get: %w", err)
	}
	out := append([]byte(nil), v...)
	if err := closer.Close(); err != nil {
		return nil, false, fmt.Errorf("pebble get close: %w", err)
	}
	return out, true, nil
}

// PointReader reads single keys through one pebble iterator, with the bloom filters of
// every level (L6 included) consulted first, so a lookup touches only the sstables that
// may hold the key. It sees the store as it was when made: the apply path makes one per
// batch of entries (its reads come before that batch's commit) and closes it after.
type PointReader struct {
	it  *pebble.Iterator
	err error // the flush before it failed
}

// NewPointReader returns a reader of the current state (everything committed before
// the call, pending writes flushed first); Close releases it. A failed flush leaves a
// reader whose every Get fails.
func (s *Store) NewPointReader() *PointReader {
	if err := s.flush(); err != nil {
		return &PointReader{err: err}
	}
	return &PointReader{it: s.db.NewIter(&pebble.IterOptions{UseL6Filters: true})}
}

// Get implements ledger.Reader: (nil, false, nil) for a missing key; the value is a copy.
func (r *PointReader) Get(key []byte) ([]byte, bool, error) {
	if r.err != nil {
		return nil, false, r.err
	}
	if !r.it.SeekPrefixGE(key) {
		if err := r.it.Error(); err != nil {
			return nil, false, fmt.Errorf("pebble seek: %w", err)
		}
		return nil, false, nil
	}
	if !bytes.Equal(r.it.Key(), key) {
		// Split is the whole key, so a valid position is the key itself.
		return nil, false, fmt.Errorf("pebble seek: found %q for %q", r.it.Key(), key)
	}
	return append([]byte(nil), r.it.Value()...), true, nil
}

// Close releases the reader's view.
func (r *PointReader) Close() error {
	if r.it == nil {
		return nil
	}
	if err := r.it.Close(); err != nil {
		return fmt.Errorf("pebble iterator close: %w", err)
	}
	return nil
}

// Applied returns the last applied index (0 when new).
func (s *Store) Applied() (uint64, error) {
	v, ok, err := s.Get(AppliedKey)
	if err != nil || !ok {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("applied index has %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// Writes is a source of key/value writes (a ledger.Overlay). Any order commits the same
// state; ascending key order makes pebble's memtable inserts cheaper.
type Writes interface {
	Writes(fn func(key, value []byte) error) error
}

// Sync makes every committed batch durable (a memtable flush: there is no WAL).
func (s *Store) Sync() error {
	if err := s.flush(); err != nil {
		return err
	}
	if err := s.db.Flush(); err != nil {
		return fmt.Errorf("pebble flush: %w", err)
	}
	return nil
}

// Close syncs and closes the database.
func (s *Store) Close() error {
	if s.db == nil {
		return nil
	}
	if s.cache != nil {
		s.cache.remove(s) // before the database closes: Cache.Metrics reads it
	}
	s.stopWriteBehind()
	err := s.Sync()
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	s.db = nil
	return err
}

// Snapshot is a point-in-time view for SaveSnapshot.
type Snapshot struct {
	snap *pebble.Snapshot
	err  error // the flush before it failed: every read fails with it
}

// NewSnapshot takes a consistent view; SaveSnapshot may run concurrently with updates.
// It holds everything committed before the call (pending writes are flushed first).
func (s *Store) NewSnapshot() *Snapshot {
	if err := s.flush(); err != nil {
		return &Snapshot{err: err}
	}
	return &Snapshot{snap: s.db.NewSnapshot()}
}

// Close releases the view.
func (sn *Snapshot) Close() error {
	if sn.snap == nil {
		return nil
	}
	return sn.snap.Close()
}

// Iterate calls fn for every key in order.
func (sn *Snapshot) Iterate(fn func(k, v []byte) error) error {
	if sn.err != nil {
		return sn.err
	}
	it := sn.snap.NewIter(nil)
	for ok := it.First(); ok; ok = it.Next() {
		if err := fn(it.Key(), it.Value()); err != nil {
			_ = it.Close()
			return err
		}
	}
	return it.Close()
}

// Scan calls fn for every key with the prefix, in order.
func (sn *Snapshot) Scan(prefix []byte, fn func(k, v []byte) error) error {
	if sn.err != nil {
		return sn.err
	}
	it := sn.snap.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	for ok := it.First(); ok; ok = it.Next() {
		if err := fn(it.Key(), it.Value()); err != nil {
			_ = it.Close()
			return err
		}
	}
	return it.Close()
}

// prefixEnd is the smallest key after every key with the prefix (nil: no bound).
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// Save streams the view: (uvarint len, key, uvarint len, value)* then a zero length.
func (sn *Snapshot) Save(w io.Writer, done <-chan struct{}) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	var n [binary.MaxVarintLen64]byte
	put := func(b []byte) error {
		l := binary.PutUvarint(n[:], uint64(len(b)))
		if _, err := bw.Write(n[:l]); err != nil {
			return err
		}
		_, err := bw.Write(b)
		return err
	}
	count := 0
	err := sn.Iterate(func(k, v []byte) error {
		if count++; count%4096 == 0 {
			select {
			case <-done:
				return ErrStopped
			default:
			}
		}
		if len(k) == 0 {
			return errors.New("empty key in store")
		}
		if err := put(k); err != nil {
			return err
		}
		return put(v)
	})
	if err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	if err := put(nil); err != nil {
		return fmt.Errorf("save snapshot end: %w", err)
	}
	return bw.Flush()
}

// Hash is the state hash of the view: every key and value in order.
func (sn *Snapshot) Hash(newHasher func() Hasher) ([]byte, error) {
	h := newHasher()
	err := sn.Iterate(func(k, v []byte) error { h.Add(k, v); return nil })
	if err != nil {
		return nil, err
	}
	return h.Sum(), nil
}

// Hasher hashes key/value pairs given in order.
type Hasher interface {
	Add(k, v []byte)
	Sum() []byte
}

// Recover replaces the whole state (applied index included) with a stream from Save.
func (s *Store) Recover(r io.Reader, done <-chan struct{}) error {
	// Pending writes go to pebble first: a recover that fails early leaves the state
	// as it was.
	if err := s.flush(); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	br := bufio.NewReaderSize(r, 1<<20)
	b := s.db.NewBatch()
	if err := b.DeleteRange([]byte{0}, []byte{0xff, 0xff, 0xff, 0xff}, nil); err != nil {
		b.Close()
		return fmt.Errorf("recover: clear: %w", err)
	}
	read := func(max uint64) ([]byte, error) {
		l, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, err
		}
		if l > max {
			return nil, fmt.Errorf("record of %d bytes exceeds %d", l, max)
		}
		buf := make([]byte, l)
		_, err = io.ReadFull(br, buf)
		return buf, err
	}
	for {
		k, err := read(snapshotKeyBytesMax)
		if err != nil {
			b.Close()
			return fmt.Errorf("recover: read key: %w", err)
		}
		if len(k) == 0 {
			break
		}
		v, err := read(snapshotValBytesMax)
		if err != nil {
			b.Close()
			return fmt.Errorf("recover: read value: %w", err)
		}
		if err := b.Set(k, v, nil); err != nil {
			b.Close()
			return fmt.Errorf("recover: set: %w", err)
		}
		if b.Len() >= snapshotBatchBytes {
			select {
			case <-done:
				b.Close()
				return fmt.Errorf("recover: %w", ErrStopped)
			default:
			}
			if err := b.Commit(pebble.NoSync); err != nil {
				b.Close()
				return fmt.Errorf("recover: commit: %w", err)
			}
			b.Close()
			b = s.db.NewBatch()
		}
	}
	err := b.Commit(pebble.NoSync)
	b.Close()
	if err != nil {
		return fmt.Errorf("recover: commit: %w", err)
	}
	return s.Sync()
}

// Get reads one key from the view.
func (sn *Snapshot) Get(key []byte) ([]byte, bool, error) {
	if sn.err != nil {
		return nil, false, sn.err
	}
	v, closer, err := sn.snap.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("pebble snapshot get: %w", err)
	}
	out := append([]byte(nil), v...)
	return out, true, closer.Close()
}

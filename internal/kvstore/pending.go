package kvstore

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"unsafe"

	"github.com/cockroachdb/pebble"
)

// Write-behind: Commit does not write each batch into pebble's memtable. It merges the
// batch into a set of pending writes (a map: a key written again replaces its pending
// value, so a branch set at prepare and again at commit, an index entry set and then
// deleted, or an account written by many transfers cost one memtable insert, not
// several), and the set goes to pebble in one batch, in key order, once it is large
// (pendingKeysMax, pendingBytesMax) or before anything reads pebble directly (readers,
// snapshots, Sync, Close). Pebble's memtable was never durable either (no WAL: the raft
// log is, and dragonboat replays the entries after the applied index pebble holds), so
// nothing changes for crashes: the applied index travels in the same pebble batch as the
// writes it covers.
//
// Concurrency: Commit and the apply path's reads (NewApplyReader) run on the replica's
// apply goroutine; readers for queries (NewPointReader, NewSnapshot, Get) may run at the
// same time and flush first. A flush freezes the current set (it is never changed
// again) and starts a new one, then writes the frozen set to pebble; an apply reader
// holds the sets it saw when it was made, so it never misses a write that moved to
// pebble after its pebble view was taken.

// Limits of the pending set. Past either the set is flushed in the background; past
// twice either, Commit waits for the flush (the apply goroutine slows down to pebble's
// pace instead of growing memory). Small sets keep each flush short (a flush is a burst
// of CPU beside the raft work): 2 Ki keys saved as much CPU per transfer as 8 Ki and
// 32 Ki (dev cluster, cross-shard single transfers: -15 %).
const (
	pendingKeysMax  = 2 << 10
	pendingBytesMax = 512 << 10
	// directKeysMin: a batch this large skips the pending set (see Commit).
	directKeysMin = 1 << 10
)

// pendingSet is writes committed to the store and not yet to pebble.
type pendingSet struct {
	m       map[string][]byte // nil value: deleted
	bytes   int               // keys and values
	applied uint64            // the applied index the set brings the store to
	hasIdx  bool              // applied is set
}

func newPendingSet() *pendingSet { return &pendingSet{m: make(map[string][]byte)} }

func (p *pendingSet) full(scale int) bool {
	return len(p.m) >= scale*pendingKeysMax || p.bytes >= scale*pendingBytesMax
}

// writeBehind is the Store's pending state.
type writeBehind struct {
	mu     sync.Mutex // cur, frozen (the pointers), writes into cur, err
	cur    *pendingSet
	frozen *pendingSet // being written to pebble; nil when none
	err    error       // a failed background flush: every later Commit fails with it

	flushMu sync.Mutex    // one flush at a time, in order
	kick    chan struct{} // wakes the background flusher
	stop    chan struct{}
	done    chan struct{}
}

func (s *Store) startWriteBehind() {
	s.wb = writeBehind{cur: newPendingSet(), kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go s.flusher()
}

func (s *Store) flusher() {
	defer close(s.wb.done)
	for {
		select {
		case <-s.wb.stop:
			return
		case <-s.wb.kick:
			_ = s.flush() // a failure is kept in wb.err: the next Commit returns it
		}
	}
}

func (s *Store) stopWriteBehind() {
	if s.wb.stop == nil {
		return
	}
	close(s.wb.stop)
	<-s.wb.done
	s.wb.stop = nil
}

// StringWrites is a source of writes that cannot fail, knows its size and hands out its
// keys as strings (a ledger.Overlay): Commit merges it without copying keys or sorting,
// or, when it is large, writes it to pebble directly.
type StringWrites interface {
	Writes
	EachWriteString(fn func(key string, value []byte))
	Len() int
}

// Commit records w and the applied index, atomically: every reader made afterwards sees
// both. raft's log is durable and replays anything after the applied index pebble
// holds; Sync makes it durable. A Writes error records nothing.
//
// A batch of directKeysMin writes or more goes to pebble at once, in one pebble batch
// with the pending writes before it: merging it into the pending set cost more (map
// inserts, a second sort) than its overwrites saved (measured with 1,000 cross-shard
// transfers per request: -15 % throughput).
func (s *Store) Commit(w Writes, applied uint64) error {
	sw, direct := w.(StringWrites)
	if direct && sw.Len() >= directKeysMin {
		return s.commitDirect(sw, applied)
	}
	var staged []kv
	if w != nil && !direct {
		if err := w.Writes(func(k, v []byte) error {
			staged = append(staged, kv{k: string(k), v: v})
			return nil
		}); err != nil {
			return fmt.Errorf("batch set: %w", err)
		}
	}
	s.wb.mu.Lock()
	if err := s.wb.err; err != nil {
		s.wb.mu.Unlock()
		return fmt.Errorf("commit after a failed flush: %w", err)
	}
	cur := s.wb.cur
	if direct {
		sw.EachWriteString(cur.put)
	}
	for _, e := range staged {
		cur.put(e.k, e.v)
	}
	cur.applied, cur.hasIdx = applied, true
	full, overfull := cur.full(1), cur.full(2)
	s.wb.mu.Unlock()
	switch {
	case overfull:
		return s.flush() // the flusher is behind: wait for it
	case full:
		select {
		case s.wb.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

func (p *pendingSet) put(k string, v []byte) {
	if old, had := p.m[k]; had {
		p.bytes -= len(k) + len(old)
	}
	p.m[k] = v
	p.bytes += len(k) + len(v)
}

// batchHeaderBytes is the size of a pebble batch's header (sequence number, count).
const batchHeaderBytes = 12

type kv struct {
	k string
	v []byte // nil: delete
}

// flush writes the pending set to pebble (in key order, applied index included, one
// batch) and returns once it is there.
func (s *Store) flush() error { return s.flushWith(nil, 0) }

// commitDirect writes the pending set and then w to pebble, in one batch.
func (s *Store) commitDirect(w StringWrites, applied uint64) error {
	if err := s.flushWith(w, applied); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// flushWith writes the pending set, then direct (when not nil, with applied as the
// applied index), to pebble in one batch.
func (s *Store) flushWith(direct StringWrites, applied uint64) error {
	s.wb.flushMu.Lock()
	defer s.wb.flushMu.Unlock()
	s.wb.mu.Lock()
	if err := s.wb.err; err != nil {
		s.wb.mu.Unlock()
		return err
	}
	p := s.wb.cur
	if !p.hasIdx {
		p = nil // nothing committed since the last flush
	} else {
		s.wb.cur, s.wb.frozen = newPendingSet(), p
	}
	s.wb.mu.Unlock()
	if p == nil && direct == nil {
		return nil
	}
	err := s.writePebble(p, direct, applied)
	s.wb.mu.Lock()
	s.wb.frozen = nil
	if err != nil && s.wb.err == nil {
		s.wb.err = err
	}
	s.wb.mu.Unlock()
	return err
}

// writePebble commits p (may be nil) and then direct (may be nil) in one pebble batch,
// with the applied index of the later.
func (s *Store) writePebble(p *pendingSet, direct StringWrites, applied uint64) error {
	size := batchHeaderBytes + 64
	var keys []string
	if p != nil {
		keys = make([]string, 0, len(p.m))
		for k := range p.m {
			keys = append(keys, k)
		}
		slices.Sort(keys) // pebble's skiplist inserter reuses the previous key's splice
		size += p.bytes + len(p.m)*(1+2*binary.MaxVarintLen32)
		if direct == nil {
			applied = p.applied
		}
	}
	if direct != nil {
		direct.EachWriteString(func(k string, v []byte) { size += len(k) + len(v) + 1 + 2*binary.MaxVarintLen32 })
	}
	b := s.db.NewBatch()
	defer b.Close()
	// The whole batch in one allocation (a growing batch copies itself at each doubling):
	// per record a kind byte, two uvarint lengths, key and value.
	if err := b.SetRepr(make([]byte, batchHeaderBytes, size)); err != nil {
		return fmt.Errorf("write pebble: %w", err)
	}
	put := func(k, v []byte) error {
		if v == nil {
			return b.Delete(k, nil)
		}
		return b.Set(k, v, nil)
	}
	for _, k := range keys {
		if err := put(unsafe.Slice(unsafe.StringData(k), len(k)), p.m[k]); err != nil {
			return fmt.Errorf("write pebble: %w", err)
		}
	}
	if direct != nil {
		if err := direct.Writes(put); err != nil { // in key order
			return fmt.Errorf("write pebble: %w", err)
		}
	}
	if err := b.Set(AppliedKey, binary.BigEndian.AppendUint64(nil, applied), nil); err != nil {
		return fmt.Errorf("write pebble: applied index: %w", err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("write pebble: commit: %w", err)
	}
	return nil
}

// ApplyReader is the apply path's view: every committed write, pending or in pebble.
// It must not be used after the next Commit (the apply path makes one per batch).
type ApplyReader struct {
	sets []*pendingSet // newest first
	st   *Store
	rd   *PointReader // pebble, made on the first key no set holds
}

// NewApplyReader returns a reader of everything committed; Close releases it.
func (s *Store) NewApplyReader() *ApplyReader {
	s.wb.mu.Lock()
	defer s.wb.mu.Unlock()
	r := &ApplyReader{st: s, sets: []*pendingSet{s.wb.cur}}
	if s.wb.frozen != nil {
		r.sets = append(r.sets, s.wb.frozen)
	}
	return r
}

// Get implements ledger.Reader: (nil, false, nil) for a missing key. The value must not
// be changed.
func (r *ApplyReader) Get(key []byte) ([]byte, bool, error) {
	// The apply goroutine (ours) is the only writer of any set, and a set a flush is
	// writing to pebble is only read: no lock.
	for _, p := range r.sets {
		if v, had := p.m[string(key)]; had {
			return v, v != nil, nil
		}
	}
	if r.rd == nil {
		r.rd = &PointReader{it: r.st.db.NewIter(&pebble.IterOptions{UseL6Filters: true})}
	}
	return r.rd.Get(key)
}

// Close releases the pebble view.
func (r *ApplyReader) Close() error {
	if r.rd == nil {
		return nil
	}
	err := r.rd.Close()
	r.rd = nil
	return err
}

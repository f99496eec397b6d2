package ledger

import (
	"fmt"
	"slices"
	"unsafe"
)

// Reader reads committed state. Get returns (nil, false, nil) for a missing key. The
// returned slice may be retained by the caller (implementations copy).
type Reader interface {
	Get(key []byte) ([]byte, bool, error)
}

// Overlay buffers the writes of one apply on top of a Reader. Writes can be rolled back
// to a mark (for linked chains); the adapter commits what remains in one batch.
type Overlay struct {
	base    Reader
	writes  map[string][]byte
	cold    map[string]bool // written keys the apply path will not read again soon
	uncache []string        // unwritten keys the apply path will not read again soon
	journal []undo          // kept only while a mark is held
	marked  bool
}

type undo struct {
	key  string
	prev []byte
	had  bool
}

// NewOverlay returns an empty overlay over base.
func NewOverlay(base Reader) *Overlay {
	return &Overlay{base: base, writes: make(map[string][]byte)}
}

// Get reads through the overlay.
func (o *Overlay) Get(key []byte) ([]byte, bool, error) {
	if v, ok := o.writes[string(key)]; ok {
		return v, v != nil, nil
	}
	v, ok, err := o.base.Get(key)
	if err != nil {
		return nil, false, fmt.Errorf("overlay read %q: %w", key, err)
	}
	return v, ok, nil
}

// Delete buffers a deletion (a nil value in Writes).
func (o *Overlay) Delete(key []byte) { o.set(key, nil) }

// Set buffers a write. The value must not be nil.
func (o *Overlay) Set(key, value []byte) {
	if value == nil {
		value = []byte{}
	}
	o.set(key, value)
}

// SetCold buffers a write the apply path is not expected to read back soon (a branch
// in its final state, a forgotten transaction): a storage adapter's read cache may drop
// the key instead of keeping the value. It changes nothing else.
func (o *Overlay) SetCold(key, value []byte) {
	o.Set(key, value)
	if o.cold == nil {
		o.cold = make(map[string]bool)
	}
	o.cold[string(key)] = true
}

// Cold tells whether the last write of key was made with SetCold.
func (o *Overlay) Cold(key []byte) bool { return o.cold[string(key)] }

// Uncache tells a storage adapter's read cache that the apply path will not read key
// again soon, without writing it (a forgotten transaction's record as created). A hint:
// it changes no state and is not rolled back.
func (o *Overlay) Uncache(key []byte) { o.uncache = append(o.uncache, string(key)) }

// Uncached calls fn for every key given to Uncache.
func (o *Overlay) Uncached(fn func(key string)) {
	for _, k := range o.uncache {
		fn(k)
	}
}

func (o *Overlay) set(key, value []byte) {
	k := string(key)
	if o.cold != nil {
		delete(o.cold, k)
	}
	if o.marked {
		prev, had := o.writes[k]
		o.journal = append(o.journal, undo{key: k, prev: prev, had: had})
	}
	o.writes[k] = value
}

// Mark returns a point to roll back to; writes are journaled from here until Release.
func (o *Overlay) Mark() int {
	o.marked = true
	return len(o.journal)
}

// Release ends a mark that will not be rolled back; releasing the first mark stops the
// journal (only writes under a mark can be undone).
func (o *Overlay) Release(mark int) {
	if mark == 0 {
		o.marked = false
		o.journal = o.journal[:0]
	}
}

// Rollback undoes every write made after mark.
func (o *Overlay) Rollback(mark int) {
	for i := len(o.journal) - 1; i >= mark; i-- {
		u := o.journal[i]
		if u.had {
			o.writes[u.key] = u.prev
		} else {
			delete(o.writes, u.key)
		}
	}
	o.journal = o.journal[:mark]
}

// Len is the number of keys written.
func (o *Overlay) Len() int { return len(o.writes) }

// Writes calls fn for every buffered write, each key once, in key order; a nil value is
// a deletion. The adapter commits them as one atomic batch, where order does not change
// the outcome but does change the cost: pebble's memtable insert starts its skiplist
// search from where the previous key went, so ascending keys skip most of the levels a
// random order would walk (each level a likely cache miss). The key is a view of the
// overlay's own copy, valid only during the call and never to be modified: fn copies
// what it keeps.
func (o *Overlay) Writes(fn func(key, value []byte) error) error {
	keys := make([]string, 0, len(o.writes))
	for k := range o.writes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := fn(unsafe.Slice(unsafe.StringData(k), len(k)), o.writes[k]); err != nil {
			return err
		}
	}
	return nil
}

// EachWrite is Writes in no particular order (no sort; for walks where order does not
// matter, like an adapter's read cache).
func (o *Overlay) EachWrite(fn func(key, value []byte) error) error {
	for k, v := range o.writes {
		if err := fn(unsafe.Slice(unsafe.StringData(k), len(k)), v); err != nil {
			return err
		}
	}
	return nil
}

// EachWriteString is EachWrite with the keys as the overlay holds them (no copy; a
// write-behind store keeps them as they are).
func (o *Overlay) EachWriteString(fn func(key string, value []byte)) {
	for k, v := range o.writes {
		fn(k, v)
	}
}

// Scanner iterates committed state in key order (storage adapters and MemStore).
type Scanner interface {
	Reader
	Scan(prefix []byte, fn func(key, value []byte) error) error
}

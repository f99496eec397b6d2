package diskrsm

import "iter"

// hashIndex maps a key's 64-bit hash to a loc: open-addressing tables with linear
// probing, each one flat array. With a shard's millions of accounts cached, a lookup in a
// Go map of that size touches its directory, a table and a group (several cache misses);
// here it is one slot and, for a collision, its neighbours in the same or the next cache
// line (the 256 table headers stay in cache). Deletion shifts the following entries of
// the run back (no tombstones), so a lookup's probe ends at the first empty slot. The
// hash's top 8 bits pick the table: each table doubles on its own, so a growth copies
// 1/256 of the entries (one table of 4 M slots took 212 ms to double from 2 M).
//
// The hash 0 marks an empty slot: a key hashing to 0 is stored as 1 (two keys may share a
// hash anyway; arenaCache compares the key).
type hashIndex struct {
	tables [hashIndexTables]hashTable
	n      int // entries
}

type hashTable struct {
	slots []hashSlot // nil, or a power of two of at least hashTableSlotsMin
	n     int
}

type hashSlot struct {
	hash uint64 // 0: empty
	loc  uint64
}

const (
	hashIndexTables    = 256
	hashIndexTableBits = 8
	hashTableSlotsMin  = 64
	// A table doubles when more than hashTableLoadNum/hashTableLoadDen of its slots
	// are used: linear probing at that load inspects about 2.5 slots per hit and 8.5
	// per miss, 16 bytes each.
	hashTableLoadNum = 3
	hashTableLoadDen = 4
)

func newHashIndex() *hashIndex { return &hashIndex{} }

func indexHash(h uint64) uint64 {
	if h == 0 {
		return 1
	}
	return h
}

func (x *hashIndex) table(h uint64) *hashTable { return &x.tables[h>>(64-hashIndexTableBits)] }

// get returns the loc of h.
func (x *hashIndex) get(h uint64) (uint64, bool) {
	h = indexHash(h)
	t := x.table(h)
	i := t.find(h)
	if i < 0 {
		return 0, false
	}
	return t.slots[i].loc, true
}

// set makes loc the entry of h, replacing the one it had.
func (x *hashIndex) set(h, loc uint64) {
	h = indexHash(h)
	if x.table(h).set(h, loc) {
		x.n++
	}
}

// del removes the entry of h and returns its loc.
func (x *hashIndex) del(h uint64) (uint64, bool) {
	h = indexHash(h)
	loc, ok := x.table(h).del(h)
	if ok {
		x.n--
	}
	return loc, ok
}

// len is the number of entries.
func (x *hashIndex) len() int { return x.n }

// all yields every entry's hash (as stored: 1 for 0) and loc, in no particular order.
func (x *hashIndex) all() iter.Seq2[uint64, uint64] {
	return func(yield func(h, loc uint64) bool) {
		for i := range x.tables {
			for _, s := range x.tables[i].slots {
				if s.hash != 0 && !yield(s.hash, s.loc) {
					return
				}
			}
		}
	}
}

// home is the slot where hash h's probe starts (h is never 0). The low bits pick it: the
// top ones picked the table.
func (t *hashTable) home(h uint64) int { return int(h) & (len(t.slots) - 1) }

// find returns the slot of h, or -1.
func (t *hashTable) find(h uint64) int {
	if len(t.slots) == 0 {
		return -1
	}
	mask := len(t.slots) - 1
	for i := t.home(h); ; i = (i + 1) & mask {
		switch t.slots[i].hash {
		case h:
			return i
		case 0:
			return -1
		}
	}
}

// set makes loc the entry of h and tells whether h is new.
func (t *hashTable) set(h, loc uint64) bool {
	if (t.n+1)*hashTableLoadDen > len(t.slots)*hashTableLoadNum {
		t.grow()
	}
	mask := len(t.slots) - 1
	for i := t.home(h); ; i = (i + 1) & mask {
		s := &t.slots[i]
		switch s.hash {
		case h:
			s.loc = loc
			return false
		case 0:
			s.hash, s.loc = h, loc
			t.n++
			return true
		}
	}
}

// del removes the entry of h and returns its loc.
func (t *hashTable) del(h uint64) (uint64, bool) {
	i := t.find(h)
	if i < 0 {
		return 0, false
	}
	loc := t.slots[i].loc
	// Backward shift: move each later entry of the run whose home is not in (i, j]
	// into the hole, so every entry stays reachable from its home without a gap.
	mask := len(t.slots) - 1
	for j := (i + 1) & mask; t.slots[j].hash != 0; j = (j + 1) & mask {
		if (j-t.home(t.slots[j].hash))&mask >= (j-i)&mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = hashSlot{}
	t.n--
	return loc, true
}

// grow doubles the table (or makes its first slots).
func (t *hashTable) grow() {
	old := t.slots
	t.slots = make([]hashSlot, max(hashTableSlotsMin, 2*len(old)))
	mask := len(t.slots) - 1
	for _, s := range old {
		if s.hash == 0 {
			continue
		}
		i := t.home(s.hash)
		for t.slots[i].hash != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = s
	}
}

package diskrsm

import (
	"bytes"
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// arenaCache is the apply cache's storage: keys and values copied into a ring of
// byte chunks, found through a map from a key's hash to where its entry starts.
//
// Why not a map[string][]byte: the garbage collector scans every key and value of such
// a map on every cycle. With 10 million accounts the apply caches of a dev cluster held
// 2.4 million entries (650 MB), and marking them took 19 % of the process's CPU
// (profile of a warm 10 M run). Nothing here holds a pointer the collector must follow:
// the map is uint64 -> uint64 and the chunks are plain bytes.
//
// Eviction is first in, first out by chunk: when the ring is full the oldest chunk is
// dropped, and every entry in it with it. A key written again is appended again (its old
// entry is garbage until its chunk goes), so keys written often, the hot accounts, stay.
// Chunks are never reused: a value handed out keeps pointing at bytes nobody changes.
//
// Two keys may share a hash: the map holds the entry of the last one put, and get
// compares the key, so the other is a miss (never a wrong value).
type arenaCache struct {
	idx    map[uint64]uint64 // xxhash of the key -> loc (chunk seq << locSeqShift | offset)
	chunks [][]byte          // ring: the chunk of seq s is chunks[s % len(chunks)]
	head   uint64            // seq of the chunk being filled
	// sweepAt: when idx reaches this many entries, the entries of dropped chunks are
	// deleted from it (they are already misses; this bounds the map).
	sweepAt int
}

const (
	// arenaChunkBytes is one chunk of the ring.
	arenaChunkBytes = 1 << 20
	// arenaEntryBytesMax: larger entries are not cached (a long linked chain's record).
	arenaEntryBytesMax = arenaChunkBytes / 8
	arenaHeaderBytes   = 8 // key length, value length (uint32 each)
	locSeqShift        = 24
	locOffsetMask      = 1<<locSeqShift - 1
	arenaSweepMin      = 1 << 16
)

// Every offset in a chunk fits a loc (this does not compile otherwise).
const _ = uint(locOffsetMask - arenaChunkBytes)

// newArenaCache returns a cache of at most bytesMax bytes of entries (at least two
// chunks).
func newArenaCache(bytesMax int) *arenaCache {
	n := bytesMax / arenaChunkBytes
	if n < 2 {
		n = 2
	}
	c := &arenaCache{chunks: make([][]byte, n)}
	c.reset()
	return c
}

func (c *arenaCache) reset() {
	c.idx = make(map[uint64]uint64)
	clear(c.chunks)
	c.head = 0
	c.chunks[0] = make([]byte, 0, arenaChunkBytes)
	c.sweepAt = arenaSweepMin
}

// live tells whether chunk seq is still in the ring.
func (c *arenaCache) live(seq uint64) bool {
	return seq <= c.head && c.head-seq < uint64(len(c.chunks))
}

// entry returns the key and value stored at loc; ok is false when its chunk was dropped.
func (c *arenaCache) entry(loc uint64) (k, v []byte, ok bool) {
	seq, off := loc>>locSeqShift, int(loc&locOffsetMask)
	if !c.live(seq) {
		return nil, nil, false
	}
	ch := c.chunks[seq%uint64(len(c.chunks))]
	kl := int(binary.LittleEndian.Uint32(ch[off:]))
	vl := int(binary.LittleEndian.Uint32(ch[off+4:]))
	ks := off + arenaHeaderBytes
	vs := ks + kl
	return ch[ks:vs:vs], ch[vs : vs+vl : vs+vl], true
}

// get returns the value cached for key (the caller must not change it).
func (c *arenaCache) get(key []byte) ([]byte, bool) { return c.getHashed(key, xxhash.Sum64(key)) }

func (c *arenaCache) getHashed(key []byte, h uint64) ([]byte, bool) {
	loc, ok := c.idx[h]
	if !ok {
		return nil, false
	}
	k, v, ok := c.entry(loc)
	if !ok {
		delete(c.idx, h)
		return nil, false
	}
	if !bytes.Equal(k, key) {
		return nil, false // another key with the same hash
	}
	return v, true
}

// put caches key = v (a copy of both).
func (c *arenaCache) put(key, v []byte) { c.putHashed(key, v, xxhash.Sum64(key)) }

// update caches key = v if key is cached already (a newer value), or always when add.
func (c *arenaCache) update(key, v []byte, add bool) {
	h := xxhash.Sum64(key)
	if !add {
		if _, ok := c.getHashed(key, h); !ok {
			return
		}
	}
	c.putHashed(key, v, h)
}

func (c *arenaCache) putHashed(key, v []byte, h uint64) {
	size := arenaHeaderBytes + len(key) + len(v)
	if size > arenaEntryBytesMax {
		delete(c.idx, h) // an older value of key must not stay
		return
	}
	ch := c.chunks[c.head%uint64(len(c.chunks))]
	if len(ch)+size > cap(ch) {
		c.head++
		ch = make([]byte, 0, arenaChunkBytes) // a new chunk: values handed out stay as they were
	}
	off := len(ch)
	ch = binary.LittleEndian.AppendUint32(ch, uint32(len(key)))
	ch = binary.LittleEndian.AppendUint32(ch, uint32(len(v)))
	ch = append(ch, key...)
	ch = append(ch, v...)
	c.chunks[c.head%uint64(len(c.chunks))] = ch
	c.idx[h] = c.head<<locSeqShift | uint64(off)
	if len(c.idx) >= c.sweepAt {
		c.sweep()
	}
}

// del forgets key (and any other key with its hash: a miss is always safe).
func (c *arenaCache) del(key []byte) { delete(c.idx, xxhash.Sum64(key)) }

// delString is del of a string key.
func (c *arenaCache) delString(key string) { delete(c.idx, xxhash.Sum64String(key)) }

// sweep deletes the map entries of dropped chunks.
func (c *arenaCache) sweep() {
	for h, loc := range c.idx {
		if !c.live(loc >> locSeqShift) {
			delete(c.idx, h)
		}
	}
	c.sweepAt = max(2*len(c.idx), arenaSweepMin)
}

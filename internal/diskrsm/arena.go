package diskrsm

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// arenaCache is the apply cache's storage: keys and values copied into a queue of
// byte chunks, found through a map from a key's hash to where its entry starts.
//
// Why not a map[string][]byte: the garbage collector scans every key and value of such
// a map on every cycle. With 10 million accounts the apply caches of a dev cluster held
// 2.4 million entries (650 MB), and marking them took 19 % of the process's CPU
// (profile of a warm 10 M run). Nothing here holds a pointer the collector must follow:
// the map is uint64 -> uint64 and the chunks are plain bytes.
//
// Entries are appended to the newest chunk; a key written again is appended again and
// its old entry becomes garbage. Each chunk counts the bytes of its current entries
// (the index points at them). When the newest chunk is full, the oldest chunk is
// dropped if at most a quarter of it is current, or if the cache has reached its size;
// otherwise a chunk is added. A dropped chunk's current entries are copied into the new
// chunk, newest first, up to three quarters of it; the older rest leave the index. So
// the cache holds about its live set plus garbage of the same order (it does not grow
// to its size with a few hot keys written over and over), a live set up to about three
// quarters of its size stays whole however often the chunks turn over (every account of
// a shard, when they fit: first-in, first-out eviction kept about 40 % of a shard's
// 2.5 million accounts where its bytes would have held them all, because with uniform
// access an account is written only every few minutes), and a larger one loses its least
// recently written entries. Chunks are never reused: a value handed out keeps pointing
// at bytes nobody changes.
//
// Two keys may share a hash: the map holds the entry of the last one put, and get
// compares the key, so the other is a miss (never a wrong value).
type arenaCache struct {
	idx       map[uint64]uint64 // xxhash of the key -> loc (chunk seq << locSeqShift | offset)
	chunks    []arenaChunk      // oldest first; the last one is being filled
	first     uint64            // seq of chunks[0]
	chunksMax int
	keep      []arenaKept // scratch of advance: the dropped chunk's current entries
}

// arenaKept is a current entry of a chunk being dropped.
type arenaKept struct {
	off  int
	hash uint64
}

type arenaChunk struct {
	b         []byte
	liveBytes int // bytes of the entries the index points at
}

const (
	// arenaChunkBytes is one chunk.
	arenaChunkBytes = 1 << 20
	// arenaEntryBytesMax: larger entries are not cached (a long linked chain's record).
	arenaEntryBytesMax = arenaChunkBytes / 8
	arenaHeaderBytes   = 8 // key length, value length (uint32 each)
	// arenaKeepBytesMax: a new chunk takes at most this many bytes of the dropped
	// chunk's current entries; the rest of it is for new writes.
	arenaKeepBytesMax = arenaChunkBytes * 3 / 4
	// arenaDropLiveBytesMax: below its size, the cache drops its oldest chunk instead of
	// adding one when at most this many of the oldest chunk's bytes are current.
	arenaDropLiveBytesMax = arenaChunkBytes / 4
	locSeqShift           = 24
	locOffsetMask         = 1<<locSeqShift - 1
)

// Every offset in a chunk fits a loc, and a dropped chunk's kept entries fit the new
// chunk (this does not compile otherwise).
const (
	_ = uint(locOffsetMask - arenaChunkBytes)
	_ = uint(arenaKeepBytesMax - arenaDropLiveBytesMax)
)

// newArenaCache returns a cache of at most bytesMax bytes of chunks (at least two).
func newArenaCache(bytesMax int) *arenaCache {
	c := &arenaCache{chunksMax: max(2, bytesMax/arenaChunkBytes)}
	c.reset()
	return c
}

func (c *arenaCache) reset() {
	c.idx = make(map[uint64]uint64)
	c.chunks = append(c.chunks[:0], arenaChunk{b: make([]byte, 0, arenaChunkBytes)})
	clear(c.chunks[1:cap(c.chunks)]) // the dropped chunks' bytes go
	c.first = 0
}

// head is the seq of the chunk being filled.
func (c *arenaCache) head() uint64 { return c.first + uint64(len(c.chunks)) - 1 }

// chunk returns the chunk of seq, nil when it was dropped.
func (c *arenaCache) chunk(seq uint64) *arenaChunk {
	if seq < c.first || seq > c.head() {
		return nil
	}
	return &c.chunks[seq-c.first]
}

// entry returns the key and value stored at loc, and the chunk holding them; ok is false
// when that chunk was dropped.
func (c *arenaCache) entry(loc uint64) (k, v []byte, ch *arenaChunk, ok bool) {
	ch = c.chunk(loc >> locSeqShift)
	if ch == nil {
		return nil, nil, nil, false
	}
	k, v = entryAt(ch.b, int(loc&locOffsetMask))
	return k, v, ch, true
}

// entryAt returns the key and value of the entry at off in chunk b.
func entryAt(b []byte, off int) (k, v []byte) {
	kl := int(binary.LittleEndian.Uint32(b[off:]))
	vl := int(binary.LittleEndian.Uint32(b[off+4:]))
	ks := off + arenaHeaderBytes
	vs := ks + kl
	return b[ks:vs:vs], b[vs : vs+vl : vs+vl]
}

func entryBytes(k, v []byte) int { return arenaHeaderBytes + len(k) + len(v) }

// get returns the value cached for key (the caller must not change it).
func (c *arenaCache) get(key []byte) ([]byte, bool) { return c.getHashed(key, xxhash.Sum64(key)) }

func (c *arenaCache) getHashed(key []byte, h uint64) ([]byte, bool) {
	loc, ok := c.idx[h]
	if !ok {
		return nil, false
	}
	k, v, _, ok := c.entry(loc)
	if !ok {
		panic(fmt.Sprintf("arena cache: index points at dropped chunk %d (first %d)", loc>>locSeqShift, c.first))
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
	c.unindex(h) // an older value of key, or another key's with its hash
	size := entryBytes(key, v)
	if size > arenaEntryBytesMax {
		return
	}
	ch := &c.chunks[len(c.chunks)-1]
	if len(ch.b)+size > cap(ch.b) {
		ch = c.advance()
	}
	c.idx[h] = c.append(ch, key, v)
}

// unindex forgets the entry of hash h, if any.
func (c *arenaCache) unindex(h uint64) {
	loc, ok := c.idx[h]
	if !ok {
		return
	}
	delete(c.idx, h)
	k, v, ch, ok := c.entry(loc)
	if !ok {
		panic(fmt.Sprintf("arena cache: index points at dropped chunk %d (first %d)", loc>>locSeqShift, c.first))
	}
	ch.liveBytes -= entryBytes(k, v)
}

// append adds an entry to ch, the chunk being filled, and returns its loc.
func (c *arenaCache) append(ch *arenaChunk, key, v []byte) uint64 {
	off := len(ch.b)
	ch.b = binary.LittleEndian.AppendUint32(ch.b, uint32(len(key)))
	ch.b = binary.LittleEndian.AppendUint32(ch.b, uint32(len(v)))
	ch.b = append(ch.b, key...)
	ch.b = append(ch.b, v...)
	ch.liveBytes += entryBytes(key, v)
	return c.head()<<locSeqShift | uint64(off)
}

// advance starts a new chunk and returns it, first dropping the oldest chunk when it is
// mostly garbage or the cache is at its size: the dropped chunk's current entries, newest
// first, are copied into the new chunk up to arenaKeepBytesMax, and the others leave
// the index.
func (c *arenaCache) advance() *arenaChunk {
	fresh := arenaChunk{b: make([]byte, 0, arenaChunkBytes)} // values handed out stay as they were
	old := c.chunks[0]
	if len(c.chunks) < c.chunksMax && old.liveBytes > arenaDropLiveBytesMax {
		c.chunks = append(c.chunks, fresh)
		return &c.chunks[len(c.chunks)-1]
	}
	oldSeq := c.first
	n := copy(c.chunks, c.chunks[1:])
	c.chunks[n] = fresh
	c.first++
	ch := &c.chunks[n]
	c.keep = c.keep[:0]
	for off := 0; off < len(old.b); {
		k, v := entryAt(old.b, off)
		h := xxhash.Sum64(k)
		if loc, ok := c.idx[h]; ok && loc == oldSeq<<locSeqShift|uint64(off) {
			c.keep = append(c.keep, arenaKept{off: off, hash: h})
		}
		off += entryBytes(k, v)
	}
	full := false
	for i := len(c.keep) - 1; i >= 0; i-- {
		k, v := entryAt(old.b, c.keep[i].off)
		h := c.keep[i].hash
		if full = full || len(ch.b)+entryBytes(k, v) > arenaKeepBytesMax; full {
			delete(c.idx, h) // this and every older entry of the dropped chunk
			continue
		}
		c.idx[h] = c.append(ch, k, v)
	}
	return ch
}

// del forgets key (and any other key with its hash: a miss is always safe).
func (c *arenaCache) del(key []byte) { c.unindex(xxhash.Sum64(key)) }

// delString is del of a string key.
func (c *arenaCache) delString(key string) { c.unindex(xxhash.Sum64String(key)) }

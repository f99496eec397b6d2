package diskrsm

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestArenaCacheModel puts, deletes and reads random keys against a map: a read returns
// the last value put for its key or misses, never anything else, and the recent keys
// are all still there.
func TestArenaCacheModel(t *testing.T) {
	for _, tc := range []struct {
		name     string
		bytesMax int
		keys     int
	}{
		{"fits", 4 * arenaChunkBytes, 1_000},
		{"evicts", 2 * arenaChunkBytes, 200_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			c := newArenaCache(tc.bytesMax)
			model := map[string][]byte{}
			var recent []string
			for i := 0; i < 300_000; i++ {
				k := fmt.Sprintf("key-%d", rng.IntN(tc.keys))
				switch op := rng.IntN(10); {
				case op < 5:
					v := bytes.Repeat([]byte{byte(i)}, 1+rng.IntN(200))
					v = append(v, k...)
					c.put([]byte(k), v)
					model[k] = v
					recent = append(recent, k)
				case op < 6:
					c.del([]byte(k))
					delete(model, k)
					recent = recent[:0]
				default:
					v, ok := c.get([]byte(k))
					if !ok {
						continue
					}
					want, in := model[k]
					if !in || !bytes.Equal(v, want) {
						t.Fatalf("op %d: get(%s) = %q, model has %q (present %v)", i, k, v, want, in)
					}
				}
				if len(recent) == 100 { // the last 100 puts (~25 KB) are never evicted
					for _, k := range recent {
						if v, ok := c.get([]byte(k)); !ok || !bytes.Equal(v, model[k]) {
							t.Fatalf("op %d: recent key %s: got %q, %v; want %q", i, k, v, ok, model[k])
						}
					}
					recent = recent[:0]
				}
			}
			checkArena(t, c)
			if len(c.idx) > tc.keys { // only current entries are indexed

				t.Fatalf("index holds %d entries for %d keys", len(c.idx), tc.keys)
			}
		})
	}
}

// TestArenaCacheKeepsLiveSet: a live set smaller than the cache stays whole, with each
// key's latest value, however many times the ring turns; deleted keys stay deleted.
func TestArenaCacheKeepsLiveSet(t *testing.T) {
	const chunks, keys = 8, 40_000 // 40,000 entries of ~100 bytes: about half the cache
	c := newArenaCache(chunks * arenaChunkBytes)
	rng := rand.New(rand.NewPCG(3, 4))
	model := map[string][]byte{}
	val := func(i, k int) []byte { return fmt.Appendf(nil, "%080d", i*keys+k) }
	for k := 0; k < keys; k++ {
		model[fmt.Sprintf("a-%d", k)] = val(0, k)
		c.put([]byte(fmt.Sprintf("a-%d", k)), val(0, k))
	}
	for i := 1; i < 600_000; i++ { // about 8 turns of the ring
		k := rng.IntN(keys)
		key := fmt.Sprintf("a-%d", k)
		if rng.IntN(100) == 0 {
			c.del([]byte(key))
			delete(model, key)
			continue
		}
		v := val(i, k)
		c.update([]byte(key), v, true)
		model[key] = v
	}
	if c.head() < 5*chunks {
		t.Fatalf("%d chunks filled; want many turns", c.head())
	}
	for k := 0; k < keys; k++ {
		key := fmt.Sprintf("a-%d", k)
		v, ok := c.get([]byte(key))
		want, in := model[key]
		if ok != in || !bytes.Equal(v, want) {
			t.Fatalf("%s = %q, %v; want %q, %v", key, v, ok, want, in)
		}
	}
	if len(c.idx) != len(model) {
		t.Fatalf("index holds %d entries for %d live keys", len(c.idx), len(model))
	}
	checkArena(t, c)
}

// TestArenaCacheStaysSmall: a few keys written over and over keep a few chunks, not the
// cache's size.
func TestArenaCacheStaysSmall(t *testing.T) {
	c := newArenaCache(64 * arenaChunkBytes)
	v := make([]byte, 200)
	for i := 0; i < 200_000; i++ { // 40 MB of writes
		c.put(fmt.Appendf(nil, "hot-%d", i%1000), v)
	}
	if len(c.chunks) > 2 {
		t.Fatalf("%d chunks for 1,000 keys of 200 bytes", len(c.chunks))
	}
	for i := 0; i < 1000; i++ {
		if _, ok := c.get(fmt.Appendf(nil, "hot-%d", i)); !ok {
			t.Fatalf("hot-%d evicted", i)
		}
	}
	checkArena(t, c)
}

// checkArena checks that every indexed entry is in a chunk and that each chunk's count
// of current bytes is the sum of its indexed entries.
func checkArena(t *testing.T, c *arenaCache) {
	t.Helper()
	live := make([]int, len(c.chunks))
	for h, loc := range c.idx {
		k, v, _, ok := c.entry(loc)
		if !ok {
			t.Fatalf("index entry %x points at dropped chunk %d", h, loc>>locSeqShift)
		}
		if xxhash.Sum64(k) != h {
			t.Fatalf("index entry %x points at key %q", h, k)
		}
		live[loc>>locSeqShift-c.first] += entryBytes(k, v)
	}
	for i, ch := range c.chunks {
		if ch.liveBytes != live[i] {
			t.Fatalf("chunk %d counts %d current bytes, index has %d", c.first+uint64(i), ch.liveBytes, live[i])
		}
	}
}

// TestArenaCacheOverCapacity: a live set larger than the cache is cut to what fits,
// the latest writes stay, and the cache never grows past its chunks.
func TestArenaCacheOverCapacity(t *testing.T) {
	const chunks = 4
	c := newArenaCache(chunks * arenaChunkBytes)
	v := make([]byte, 100)
	const n = 200_000 // ~22 MB of entries for a 4 MiB cache
	for i := 0; i < n; i++ {
		c.put(fmt.Appendf(nil, "k-%07d", i), v)
	}
	if len(c.chunks) != chunks {
		t.Fatalf("%d chunks, want %d", len(c.chunks), chunks)
	}
	checkArena(t, c)
	fit := chunks * arenaChunkBytes / (arenaHeaderBytes + 9 + len(v))
	if len(c.idx) > fit {
		t.Fatalf("index holds %d entries; at most %d fit", len(c.idx), fit)
	}
	for i := n - 1000; i < n; i++ {
		if _, ok := c.get(fmt.Appendf(nil, "k-%07d", i)); !ok {
			t.Fatalf("recent key %d evicted", i)
		}
	}
	hits := 0
	for i := 0; i < n; i++ {
		if _, ok := c.get(fmt.Appendf(nil, "k-%07d", i)); ok {
			hits++
		}
	}
	if hits != len(c.idx) || hits < fit/2 {
		t.Fatalf("%d keys cached, index %d, %d fit", hits, len(c.idx), fit)
	}
}

// TestArenaCacheValuesStay: a value handed out does not change when its chunk is
// dropped and the ring goes on.
func TestArenaCacheValuesStay(t *testing.T) {
	c := newArenaCache(2 * arenaChunkBytes)
	c.put([]byte("a"), []byte("first"))
	v, ok := c.get([]byte("a"))
	if !ok {
		t.Fatal("a missing")
	}
	big := make([]byte, arenaEntryBytesMax-100)
	for i := 0; i < 40; i++ {
		c.put([]byte(fmt.Sprintf("k%d", i)), big)
	}
	if _, ok := c.get([]byte("a")); ok {
		t.Fatal("a still cached after its chunk was dropped")
	}
	if string(v) != "first" {
		t.Fatalf("value handed out changed to %q", v)
	}
	if cap(v) != len(v) {
		t.Fatalf("value has room to append into the arena: len %d cap %d", len(v), cap(v))
	}
}

// TestArenaCacheLargeAndColliding: an entry too large for the cache drops the key's
// older value; a key whose hash points at another key's entry misses.
func TestArenaCacheLargeAndColliding(t *testing.T) {
	c := newArenaCache(2 * arenaChunkBytes)
	c.put([]byte("k"), []byte("small"))
	c.put([]byte("k"), make([]byte, arenaEntryBytesMax))
	if v, ok := c.get([]byte("k")); ok {
		t.Fatalf("k = %d bytes cached; want a miss (too large), not the older value", len(v))
	}
	c.put([]byte("a"), []byte("va"))
	c.idx[xxhash.Sum64String("b")] = c.idx[xxhash.Sum64String("a")] // as if b's hash were a's
	if v, ok := c.get([]byte("b")); ok {
		t.Fatalf("b = %q; want a miss", v)
	}
	if v, ok := c.get([]byte("a")); !ok || string(v) != "va" {
		t.Fatalf("a = %q, %v", v, ok)
	}
	c.reset()
	if _, ok := c.get([]byte("a")); ok {
		t.Fatal("a cached after reset")
	}
}

// TestArenaCacheUpdate: update replaces a cached key's value and adds an absent key only
// when told to.
func TestArenaCacheUpdate(t *testing.T) {
	c := newArenaCache(2 * arenaChunkBytes)
	c.update([]byte("a"), []byte("1"), false)
	if _, ok := c.get([]byte("a")); ok {
		t.Fatal("update without add cached an absent key")
	}
	c.update([]byte("a"), []byte("1"), true)
	c.update([]byte("a"), []byte("2"), false)
	if v, ok := c.get([]byte("a")); !ok || string(v) != "2" {
		t.Fatalf("a = %q, %v; want 2", v, ok)
	}
}

// TestApplyCacheSize checks the apply cache's bound follows Core.CacheBytes: the
// default when unset, the size asked for, and never past CacheBytesMax.
func TestApplyCacheSize(t *testing.T) {
	for _, tc := range []struct{ bytes, wantChunks int }{
		{0, CacheBytesDefault / arenaChunkBytes},
		{-1, CacheBytesDefault / arenaChunkBytes},
		{128 << 20, 128},
		{CacheBytesMax + arenaChunkBytes, CacheBytesMax / arenaChunkBytes},
	} {
		c := newApplyCache(nil, tc.bytes, nil, nil)
		if got := c.a.chunksMax; got != tc.wantChunks {
			t.Errorf("CacheBytes %d: %d chunks, want %d", tc.bytes, got, tc.wantChunks)
		}
	}
}

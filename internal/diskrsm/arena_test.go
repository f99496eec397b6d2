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
			if len(c.idx) > max(2*tc.keys, 2*arenaSweepMin) {
				t.Fatalf("index holds %d entries for %d keys", len(c.idx), tc.keys)
			}
		})
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
		if got := len(c.a.chunks); got != tc.wantChunks {
			t.Errorf("CacheBytes %d: %d chunks, want %d", tc.bytes, got, tc.wantChunks)
		}
	}
}

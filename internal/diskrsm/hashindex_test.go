package diskrsm

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestHashIndexModel runs random sets and deletes against a Go map. The hashes come from
// small ranges so that runs of colliding homes are long, wrap around a table's end, and
// deletions shift entries back across them; 0 is among them.
func TestHashIndexModel(t *testing.T) {
	spread := func(n uint64) func(*rand.Rand) uint64 {
		return func(rng *rand.Rand) uint64 { return rng.Uint64N(n) * 0x9E3779B97F4A7C15 } // 0 stays 0
	}
	for _, tc := range []struct {
		name string
		hash func(*rand.Rand) uint64
		ops  int
	}{
		{"dense", spread(3_000), 200_000},
		{"tiny", spread(8), 10_000},
		{"sparse", func(rng *rand.Rand) uint64 { return rng.Uint64() }, 100_000},
		// One table, five homes: its first slots and (all low bits set) its last ones,
		// so the runs are long and wrap around its end.
		{"clustered", func(rng *rand.Rand) uint64 {
			low := []uint64{0, 1, 2, 1<<32 - 1, 1<<32 - 2}[rng.IntN(5)]
			return 7<<56 | rng.Uint64N(60)<<32 | low
		}, 100_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			x := newHashIndex()
			model := make(map[uint64]uint64)
			hash := func() uint64 { return tc.hash(rng) }
			for i := 0; i < tc.ops; i++ {
				h := hash()
				switch rng.IntN(3) {
				case 0, 1:
					loc := rng.Uint64()
					x.set(h, loc)
					model[indexHash(h)] = loc
				case 2:
					loc, ok := x.del(h)
					want, in := model[indexHash(h)]
					if ok != in || loc != want {
						t.Fatalf("op %d: del(%x) = %d, %v; want %d, %v", i, h, loc, ok, want, in)
					}
					delete(model, indexHash(h))
				}
				if i%997 == 0 {
					checkHashIndex(t, x, model)
				}
			}
			checkHashIndex(t, x, model)
			for h := range model {
				if _, ok := x.del(h); !ok {
					t.Fatalf("del(%x) missed", h)
				}
			}
			if x.len() != 0 {
				t.Fatalf("%d entries left", x.len())
			}
		})
	}
}

func checkHashIndex(t *testing.T, x *hashIndex, model map[uint64]uint64) {
	t.Helper()
	if x.len() != len(model) {
		t.Fatalf("%d entries, model %d", x.len(), len(model))
	}
	n := 0
	for i := range x.tables {
		tb := &x.tables[i]
		if tb.n*hashTableLoadDen > len(tb.slots)*hashTableLoadNum {
			t.Fatalf("table %d: %d entries in %d slots: over the load limit", i, tb.n, len(tb.slots))
		}
		n += tb.n
	}
	if n != x.len() {
		t.Fatalf("tables hold %d entries, index counts %d", n, x.len())
	}
	for h, want := range model {
		if loc, ok := x.get(h); !ok || loc != want {
			t.Fatalf("get(%x) = %d, %v; want %d", h, loc, ok, want)
		}
	}
	n = 0
	for h, loc := range x.all() {
		if model[h] != loc {
			t.Fatalf("entry %x = %d; model %d", h, loc, model[h])
		}
		n++
	}
	if n != len(model) {
		t.Fatalf("all yields %d entries, model %d", n, len(model))
	}
}

// BenchmarkHashIndexGet against a Go map, both with 2.5 M entries (a shard's accounts at
// 10 M) and 2,500, looking up random present hashes.
func BenchmarkHashIndexGet(b *testing.B) {
	for _, n := range []int{2_500, 2_500_000} {
		rng := rand.New(rand.NewPCG(1, 2))
		hs := make([]uint64, n)
		x := newHashIndex()
		m := make(map[uint64]uint64)
		for i := range hs {
			hs[i] = rng.Uint64()
			x.set(hs[i], uint64(i))
			m[hs[i]] = uint64(i)
		}
		probe := make([]uint64, 1<<16)
		for i := range probe {
			probe[i] = hs[rng.IntN(n)]
		}
		b.Run(fmt.Sprintf("index/%d", n), func(b *testing.B) {
			var sum uint64
			for i := 0; b.Loop(); i++ {
				loc, _ := x.get(probe[i&(len(probe)-1)])
				sum += loc
			}
			_ = sum
		})
		b.Run(fmt.Sprintf("map/%d", n), func(b *testing.B) {
			var sum uint64
			for i := 0; b.Loop(); i++ {
				sum += m[probe[i&(len(probe)-1)]]
			}
			_ = sum
		})
	}
}

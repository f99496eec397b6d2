package diskrsm

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkArenaCacheGet reads random cached accounts: a shard replica's share of 10
// thousand and of 10 million accounts (the benchmark's populations over 4 shards).
func BenchmarkArenaCacheGet(b *testing.B) {
	for _, n := range []int{2_500, 2_500_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			c := newArenaCache(CacheBytesMax)
			keys := make([][]byte, n)
			v := make([]byte, 90)
			for i := range keys {
				keys[i] = fmt.Appendf(nil, "a\x00\x00\x01\x02acct-%08d", i)
				c.put(keys[i], v)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, ok := c.get(keys[rng.IntN(n)]); !ok {
					b.Fatal("miss")
				}
			}
		})
	}
}

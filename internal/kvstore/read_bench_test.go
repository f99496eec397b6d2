package kvstore

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkApplyReaderGet reads random keys of a store whose keys were all loaded once
// and then partly rewritten over several flushes (newer versions in upper levels over
// the loaded ones), the shape of a large account population under transfers: each op
// is one apply batch's view and 64 point reads. "iter" is the apply path's reader (one
// pebble iterator per view, SeekPrefixGE per key); "get" is pebble's DB.Get per key,
// which stops at the newest level holding the key but builds its iterator per call.
// Measured 2026-12-03 (2 cores, AMD EPYC): iter 4.3 us per read, get 12 us; iter with
// 256 KiB index blocks (one-level indexes) 3.9-4.2 us against 4.4-4.8 us (not adopted:
// the apply path's reads are a few percent of the CPU at 10 million accounts).
func BenchmarkApplyReaderGet(b *testing.B) {
	const keys, rounds, perRound, readsPerView = 400_000, 12, 40_000, 64
	cache := NewCache(1 << 30) // holds every block, as a node's cache does in the benchmark
	defer cache.Close()
	s, err := Open(b.TempDir(), cache)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	key := func(i int) string { return fmt.Sprintf("a/%010d", i) }
	val := make([]byte, 96)
	applied := uint64(0)
	commit := func(w strWrites) {
		applied++
		if err := s.Commit(w, applied); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < keys; i += 10_000 {
		w := make(strWrites, 10_000)
		for j := i; j < i+10_000; j++ {
			w[key(j)] = val
		}
		commit(w)
	}
	if err := s.Sync(); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for r := 0; r < rounds; r++ {
		for n := 0; n < perRound; n += 2_000 {
			w := make(strWrites, 2_000)
			for range 2_000 {
				w[key(rng.IntN(keys))] = val
			}
			commit(w)
		}
		if err := s.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	probe := make([][]byte, 1<<16)
	for i := range probe {
		probe[i] = []byte(key(rng.IntN(keys)))
	}
	b.Run("iter", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			rd := s.NewApplyReader()
			for j := range readsPerView {
				if _, ok, err := rd.Get(probe[(i*readsPerView+j)&(len(probe)-1)]); err != nil || !ok {
					b.Fatalf("get: %v %v", ok, err)
				}
			}
			if err := rd.Close(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*readsPerView), "ns/read")
	})
	b.Run("get", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			for j := range readsPerView {
				v, c, err := s.db.Get(probe[(i*readsPerView+j)&(len(probe)-1)])
				if err != nil {
					b.Fatalf("get: %v", err)
				}
				_ = append([]byte(nil), v...)
				c.Close()
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*readsPerView), "ns/read")
	})
}

package diskrsm

import (
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// Limits of the absent-key filter.
const (
	// filterBitsPerKey and filterHashes: about 0.3 % false positives in a full segment.
	filterBitsPerKey = 12
	filterHashes     = 8
	// filterSegKeysFirst is the first segment's capacity; each next one doubles it.
	filterSegKeysFirst = 1 << 16
	// FilterKeysMax bounds the keys one replica's filter holds: past it the filter turns
	// off and every lookup goes to pebble. Full, its bits take about 48 MiB; segments
	// are allocated ahead of their keys, so up to twice that.
	FilterKeysMax = 32 << 20
)

// absentFilter tells, for the key families it covers, that a key is certainly not
// stored, so the apply path skips pebble's lookup of a key that does not exist yet (a
// new transfer id, branch or transaction): such a lookup finds nothing only after a
// memtable seek and a bloom filter check of every L0 sublevel and level, on every
// replica. It is complete: it has been given every covered key the store holds (the
// replica's Open scans them, every commit adds its writes, a snapshot's recovery scans
// again), so a key it has not seen is absent. A deleted key stays in it; that costs a
// lookup, nothing else. It is a scalable Bloom filter: segments of doubling capacity,
// keys added to the newest. Past keysMax it turns off. Not safe for concurrent use
// (the apply path is one goroutine at a time).
type absentFilter struct {
	families [256]bool // covered keys: the first byte is one of these
	prefixes []byte
	segs     []filterSeg
	keys     int // keys in all segments
	keysMax  int
	off      bool
}

type filterSeg struct {
	bits    []uint64
	nbits   uint64
	keys    int
	keysMax int
}

// newAbsentFilter covers the keys whose first byte is one of prefixes.
func newAbsentFilter(prefixes []byte, keysMax int) *absentFilter {
	f := &absentFilter{prefixes: append([]byte(nil), prefixes...), keysMax: keysMax}
	for _, p := range prefixes {
		f.families[p] = true
	}
	return f
}

func (f *absentFilter) covers(key []byte) bool { return len(key) > 0 && f.families[key[0]] }

// absent reports whether key is certainly not stored: covered, filter on, and in no
// segment.
func (f *absentFilter) absent(key []byte) bool {
	if f.off || !f.covers(key) {
		return false
	}
	return !f.mayContain(xxhash.Sum64(key))
}

func (f *absentFilter) mayContain(h uint64) bool {
	for i := range f.segs {
		if f.segs[i].mayContain(h) {
			return true
		}
	}
	return false
}

// add records a stored key (uncovered keys are ignored).
func (f *absentFilter) add(key []byte) {
	if f.off || !f.covers(key) {
		return
	}
	h := xxhash.Sum64(key)
	if f.mayContain(h) {
		return // added before (a rewrite), or a false positive: either way answered "may exist"
	}
	if f.keys >= f.keysMax {
		// Full: a key left out would be a false "absent". Off for good (until reset).
		f.off = true
		f.segs = nil
		return
	}
	if n := len(f.segs); n == 0 || f.segs[n-1].keys >= f.segs[n-1].keysMax {
		keysMax := filterSegKeysFirst
		if n > 0 {
			keysMax = 2 * f.segs[n-1].keysMax
		}
		f.segs = append(f.segs, newFilterSeg(keysMax))
	}
	f.segs[len(f.segs)-1].add(h)
	f.keys++
}

// reset empties the filter and turns it on (before a rebuild).
func (f *absentFilter) reset() {
	f.segs, f.keys, f.off = nil, 0, false
}

// scanner is what the filter is built from: the store's keys of one family.
type scanner interface {
	Scan(prefix []byte, fn func(k, v []byte) error) error
}

// rebuild resets the filter and adds every covered key of s.
func (f *absentFilter) rebuild(s scanner) error {
	f.reset()
	for _, p := range f.prefixes {
		if err := s.Scan([]byte{p}, func(k, _ []byte) error {
			f.add(k)
			return nil
		}); err != nil {
			f.off = true
			return fmt.Errorf("absent-key filter: scan %q: %w", p, err)
		}
	}
	return nil
}

func newFilterSeg(keysMax int) filterSeg {
	words := (keysMax*filterBitsPerKey + 63) / 64
	return filterSeg{bits: make([]uint64, words), nbits: uint64(words) * 64, keysMax: keysMax}
}

// Double hashing (Kirsch-Mitzenmacher) over one 64-bit hash.
func (s *filterSeg) add(h uint64) {
	delta := h>>33 | h<<31
	for i := 0; i < filterHashes; i++ {
		b := h % s.nbits
		s.bits[b/64] |= 1 << (b % 64)
		h += delta
	}
	s.keys++
}

func (s *filterSeg) mayContain(h uint64) bool {
	delta := h>>33 | h<<31
	for i := 0; i < filterHashes; i++ {
		b := h % s.nbits
		if s.bits[b/64]&(1<<(b%64)) == 0 {
			return false
		}
		h += delta
	}
	return true
}

// bytes is the memory the filter's bits take.
func (f *absentFilter) bytes() int {
	n := 0
	for i := range f.segs {
		n += 8 * len(f.segs[i].bits)
	}
	return n
}

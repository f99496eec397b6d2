package kvstore

import (
	"slices"
	"strings"
)

// StoreMetrics is one store's storage state, from pebble's metrics: what an operator (or
// a benchmark) looks at when reads slow down or compactions pile up.
type StoreMetrics struct {
	Dir string
	// L0 sublevels and files: every point read checks each sublevel; past
	// l0CompactionSublevels an L0 compaction starts.
	L0Sublevels int
	L0Files     int64
	Files       int64  // sstables at every level
	SizeBytes   uint64 // sstables at every level
	// CompactionDebtBytes is pebble's estimate of what compactions still have to
	// rewrite to bring the levels back in shape.
	CompactionDebtBytes uint64
	CompactionsInFlight int64
	Compactions         int64  // since the store opened
	CompactedBytes      uint64 // written by compactions since the store opened
	Flushes             int64
	FlushedBytes        uint64 // memtables written to L0 since the store opened
	MemtableBytes       uint64
}

// CacheMetrics is a shared block cache's state (hits and misses since it was made).
type CacheMetrics struct {
	SizeBytes int64
	Hits      int64
	Misses    int64
}

// Metrics returns the store's storage metrics.
func (s *Store) Metrics() StoreMetrics {
	m := s.db.Metrics()
	out := StoreMetrics{
		Dir:                 s.dir,
		L0Sublevels:         int(m.Levels[0].Sublevels),
		L0Files:             m.Levels[0].NumFiles,
		CompactionDebtBytes: m.Compact.EstimatedDebt,
		CompactionsInFlight: m.Compact.NumInProgress,
		Compactions:         m.Compact.Count,
		Flushes:             m.Flush.Count,
		FlushedBytes:        m.Levels[0].BytesFlushed,
		MemtableBytes:       m.MemTable.Size,
	}
	for _, l := range m.Levels {
		out.Files += l.NumFiles
		out.SizeBytes += uint64(l.Size)
		out.CompactedBytes += l.BytesCompacted
	}
	return out
}

// Metrics returns the cache's figures and those of every store open with it, by
// directory.
func (c *Cache) Metrics() (CacheMetrics, []StoreMetrics) {
	m := c.c.Metrics()
	cm := CacheMetrics{SizeBytes: m.Size, Hits: m.Hits, Misses: m.Misses}
	c.mu.Lock()
	defer c.mu.Unlock() // a store leaves the set before it closes: none closes under us
	out := make([]StoreMetrics, 0, len(c.stores))
	for s := range c.stores {
		out = append(out, s.Metrics())
	}
	slices.SortFunc(out, func(a, b StoreMetrics) int { return strings.Compare(a.Dir, b.Dir) })
	return cm, out
}

func (c *Cache) add(s *Store) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stores[s] = struct{}{}
}

func (c *Cache) remove(s *Store) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.stores, s)
}

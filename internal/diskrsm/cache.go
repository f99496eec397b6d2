package diskrsm

import (
	"github.com/shardledger/shardledger/internal/kvstore"
	"github.com/shardledger/shardledger/ledger"
)

// CacheBytesDefault bounds the apply cache of one replica whose core sets no size
// (Core.CacheBytes): keys and values, with the older versions of keys written again
// until their chunk is dropped (arena.go). 16 MiB holds about 120,000 accounts, or 8 s
// of the coordinator's records at 7,000 transactions/s. CacheBytesMax bounds any size.
const (
	CacheBytesDefault = 16 << 20
	CacheBytesMax     = 4 << 30
)

// applyCache is a read-through, write-through cache of committed values for the apply
// path only (Update runs on one goroutine at a time; Lookup never touches it). Hot
// accounts are read from memory instead of pebble's memtable and files. It holds
// exactly what pebble holds for the keys it has, because every commit goes through it.
type applyCache struct {
	store *kvstore.Store
	rd    *kvstore.ApplyReader // this batch's view of the store, made on the first miss
	a     *arenaCache
	eager func(key []byte) bool // keys cached as soon as they are written
	// absent answers misses of the keys it covers without pebble; it sees every
	// committed write (committed), so it is never behind the store. nil: none.
	absent *absentFilter
}

func newApplyCache(st *kvstore.Store, bytes int, eager func([]byte) bool, absent *absentFilter) *applyCache {
	if eager == nil {
		eager = func([]byte) bool { return false }
	}
	if bytes <= 0 {
		bytes = CacheBytesDefault
	}
	return &applyCache{store: st, a: newArenaCache(min(bytes, CacheBytesMax)), eager: eager, absent: absent}
}

// Get implements ledger.Reader.
func (c *applyCache) Get(key []byte) ([]byte, bool, error) {
	if v, ok := c.a.get(key); ok {
		return v, true, nil
	}
	if c.absent != nil && c.absent.absent(key) {
		return nil, false, nil
	}
	if c.rd == nil {
		c.rd = c.store.NewApplyReader()
	}
	v, ok, err := c.rd.Get(key)
	if err == nil && ok {
		c.a.put(key, v)
	}
	return v, ok, err
}

// committed records what a batch wrote (after pebble took it).
func (c *applyCache) committed(w *ledger.Overlay) {
	_ = w.EachWrite(func(k, v []byte) error {
		if v != nil && c.absent != nil {
			c.absent.add(k)
		}
		if v == nil || w.Cold(k) {
			c.a.del(k)
		} else {
			c.a.update(k, v, c.eager(k))
		}
		return nil
	})
	w.Uncached(c.a.delString)
}

// release drops the batch's view of the store (before the next batch reads: the view
// does not see later commits).
func (c *applyCache) release() error {
	if c.rd == nil {
		return nil
	}
	err := c.rd.Close()
	c.rd = nil
	return err
}

func (c *applyCache) clear() { c.a.reset() }

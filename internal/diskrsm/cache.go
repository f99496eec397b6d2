package diskrsm

import (
	"github.com/shardledger/shardledger/internal/kvstore"
	"github.com/shardledger/shardledger/ledger"
)

// CacheEntriesMax bounds the apply cache of one replica.
const CacheEntriesMax = 200_000

// applyCache is a read-through, write-through cache of committed values for the apply
// path only (Update runs on one goroutine at a time; Lookup never touches it). Hot
// accounts are read from memory instead of pebble's memtable and files. It holds
// exactly what pebble holds for the keys it has, because every commit goes through it.
type applyCache struct {
	store *kvstore.Store
	rd    *kvstore.ApplyReader // this batch's view of the store, made on the first miss
	m     map[string][]byte
	eager func(key []byte) bool // keys cached as soon as they are written
	// absent answers misses of the keys it covers without pebble; it sees every
	// committed write (committed), so it is never behind the store. nil: none.
	absent *absentFilter
}

func newApplyCache(st *kvstore.Store, eager func([]byte) bool, absent *absentFilter) *applyCache {
	if eager == nil {
		eager = func([]byte) bool { return false }
	}
	return &applyCache{store: st, m: make(map[string][]byte), eager: eager, absent: absent}
}

// Get implements ledger.Reader.
func (c *applyCache) Get(key []byte) ([]byte, bool, error) {
	if v, ok := c.m[string(key)]; ok {
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
		c.put(string(key), v)
	}
	return v, ok, err
}

func (c *applyCache) put(k string, v []byte) {
	if len(c.m) >= CacheEntriesMax {
		// Evict about a tenth, in map order (effectively random).
		n := CacheEntriesMax / 10
		for victim := range c.m {
			delete(c.m, victim)
			if n--; n == 0 {
				break
			}
		}
	}
	c.m[k] = v
}

// committed records what a batch wrote (after pebble took it).
func (c *applyCache) committed(w *ledger.Overlay) {
	_ = w.EachWrite(func(k, v []byte) error {
		if v != nil && c.absent != nil {
			c.absent.add(k)
		}
		if v == nil || w.Cold(k) {
			delete(c.m, string(k))
		} else if _, ok := c.m[string(k)]; ok || c.eager(k) {
			c.put(string(k), v)
		}
		return nil
	})
	w.Uncached(func(k string) { delete(c.m, k) })
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

func (c *applyCache) clear() { clear(c.m) }

package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"sort"
)

// MemStore is an in-memory Reader for tests and tools: a map with a sorted hash.
type MemStore struct {
	kv map[string][]byte
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore { return &MemStore{kv: make(map[string][]byte)} }

// Get implements Reader.
func (m *MemStore) Get(key []byte) ([]byte, bool, error) {
	v, ok := m.kv[string(key)]
	return v, ok, nil
}

// Commit applies an overlay's writes.
func (m *MemStore) Commit(o *Overlay) {
	_ = o.EachWrite(func(k, v []byte) error {
		if v == nil {
			delete(m.kv, string(k))
			return nil
		}
		m.kv[string(k)] = append([]byte(nil), v...)
		return nil
	})
}

// Scan implements Scanner.
func (m *MemStore) Scan(prefix []byte, fn func(k, v []byte) error) error {
	var keys []string
	for k := range m.kv {
		if len(k) >= len(prefix) && k[:len(prefix)] == string(prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := fn([]byte(k), m.kv[k]); err != nil {
			return err
		}
	}
	return nil
}

// Hash is the state hash: SHA-256 over every (key, value) in key order.
func (m *MemStore) Hash() []byte {
	keys := make([]string, 0, len(m.kv))
	for k := range m.kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := NewHasher()
	for _, k := range keys {
		h.Add([]byte(k), m.kv[k])
	}
	return h.Sum()
}

// Hasher computes the state hash incrementally over keys given in order.
type Hasher struct{ h hashWriter }

type hashWriter interface {
	Write([]byte) (int, error)
	Sum([]byte) []byte
}

// NewHasher returns a state hasher.
func NewHasher() *Hasher { return &Hasher{h: sha256.New()} }

// Add hashes one key/value pair (length-prefixed, so pairs cannot run together).
func (h *Hasher) Add(key, value []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(key)))
	h.h.Write(n[:])
	h.h.Write(key)
	binary.BigEndian.PutUint64(n[:], uint64(len(value)))
	h.h.Write(n[:])
	h.h.Write(value)
}

// Sum returns the hash.
func (h *Hasher) Sum() []byte { return h.h.Sum(nil) }

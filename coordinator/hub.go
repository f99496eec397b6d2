package coordinator

import (
	"sync"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// Hub forwards what a node's coordinator replicas apply to the drivers of their groups.
// The node is created (with Hub.Notify as its apply hook) before the drivers exist.
type Hub struct {
	mu      sync.RWMutex
	drivers map[uint64]*Driver
}

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{drivers: map[uint64]*Driver{}}
}

// Register attaches a group's driver (nil detaches).
func (h *Hub) Register(group uint64, d *Driver) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d == nil {
		delete(h.drivers, group)
		return
	}
	h.drivers[group] = d
}

// Notify is the coordinator replicas' apply hook; it never blocks.
func (h *Hub) Notify(group uint64, results []*raftv1.BatchResult) {
	h.mu.RLock()
	d := h.drivers[group]
	h.mu.RUnlock()
	if d != nil {
		d.Notify(results)
	}
}

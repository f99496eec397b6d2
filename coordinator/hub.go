package coordinator

import (
	"sync"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// Hub forwards what a node's coordinator replicas apply to the drivers of their groups,
// and wakes routers waiting for a transaction's decision. The node is created (with
// Hub.Notify as its apply hook) before the drivers exist.
type Hub struct {
	mu      sync.RWMutex
	drivers map[uint64]*Driver
	waiters map[string][]chan *raftv1.TxnRecord
}

// WaitersMax bounds registered decision waiters; past it Wait returns nil (callers poll).
const WaitersMax = 100_000

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{drivers: map[uint64]*Driver{}, waiters: map[string][]chan *raftv1.TxnRecord{}}
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

// Wait returns a channel that receives the txn's record once the local replica applies
// a decision for it, and a cancel func to call when done waiting. nil when full.
func (h *Hub) Wait(txnID string) (<-chan *raftv1.TxnRecord, func()) {
	ch := make(chan *raftv1.TxnRecord, 1)
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.waiters) >= WaitersMax {
		return nil, func() {}
	}
	h.waiters[txnID] = append(h.waiters[txnID], ch)
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		ws := h.waiters[txnID]
		for i, w := range ws {
			if w == ch {
				ws = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(ws) == 0 {
			delete(h.waiters, txnID)
		} else {
			h.waiters[txnID] = ws
		}
	}
}

// Notify is the coordinator replicas' apply hook; it never blocks.
func (h *Hub) Notify(group uint64, results []*raftv1.BatchResult) {
	h.mu.RLock()
	d := h.drivers[group]
	if len(h.waiters) > 0 {
		for _, br := range results {
			for _, r := range br.GetResults() {
				if rec := r.GetTxn(); rec != nil && Decided(rec) {
					for _, ch := range h.waiters[rec.TxnId] {
						select {
						case ch <- rec:
						default:
						}
					}
				}
			}
		}
	}
	h.mu.RUnlock()
	if d != nil {
		d.Notify(results)
	}
}

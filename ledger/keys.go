// Package ledger is the account shard's pure, deterministic state machine: accounts,
// intra-shard transfers, linked chains, two-phase (pending) transfers, the participant
// side of cross-shard transactions and slot ownership. It does no I/O: it reads through a
// Reader and writes into an Overlay that the storage adapter commits atomically.
package ledger

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// SlotCountDefault is the number of hash slots of a new cluster.
const SlotCountDefault uint32 = 4096

// SlotOf maps an account id to its hash slot.
func SlotOf(accountID string, slotCount uint32) uint32 {
	if slotCount == 0 {
		panic("ledger: slot count is zero")
	}
	return uint32(xxhash.Sum64String(accountID) % uint64(slotCount))
}

// Key prefixes. Per-account, per-transfer and per-branch keys carry the slot of the
// account they belong to, so a slot can move as one unit.
const (
	prefixAccount  byte = 'a'
	prefixBranch   byte = 'b'
	prefixEvent    byte = 'e'
	prefixIndex    byte = 'i' // transfer id -> slot of the record
	prefixList     byte = 'l' // prepared list number -> its branches' keys (see preparedlist.go)
	prefixShard    byte = 'm'
	prefixListOpen byte = 'n' // prepared list number -> how many of its branches are prepared
	prefixTransfer byte = 't'
	prefixPrepared byte = 'w' // earlier layout: open (prepared) branch -> its branch key
	prefixPending  byte = 'x' // open pending transfer -> its transfer key
	// PrefixAdapter is reserved for the storage adapter (applied index and the like).
	PrefixAdapter byte = 'z'
)

func slotKey(prefix byte, slot uint32, id string) []byte {
	k := make([]byte, 0, 5+len(id))
	k = append(k, prefix)
	k = binary.BigEndian.AppendUint32(k, slot)
	return append(k, id...)
}

func accountKey(slot uint32, id string) []byte  { return slotKey(prefixAccount, slot, id) }
func transferKey(slot uint32, id string) []byte { return slotKey(prefixTransfer, slot, id) }

func indexKey(transferID string) []byte {
	return append([]byte{prefixIndex}, transferID...)
}

func branchKey(slot uint32, txnID string, index uint32) []byte {
	k := slotKey(prefixBranch, slot, txnID)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, index)
}

func eventKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixEvent}, seq)
}

var shardStateKey = []byte{prefixShard}

// EventKeyPrefix bounds the event log for readers.
func EventKey(seq uint64) []byte { return eventKey(seq) }

func preparedKey(branchKey []byte) []byte { return append([]byte{prefixPrepared}, branchKey...) }

func pendingKey(transferKey []byte) []byte { return append([]byte{prefixPending}, transferKey...) }

// MostlyNewKeyPrefixes are the key families whose lookups on the apply path are mostly
// of keys not stored yet: transfers and their index (a new transfer id), branches (a
// new prepare). A storage adapter may answer those misses from a filter.
// The count of a prepared list is stored only once some but not all of its branches
// are resolved: mostly absent too.
func MostlyNewKeyPrefixes() []byte {
	return []byte{prefixBranch, prefixIndex, prefixListOpen, prefixTransfer}
}

// IsHotKey tells whether a stored key is read back soon after it is written: accounts,
// branches (a prepared branch is read again by its commit or abort) and prepared lists
// (read again when their branches are resolved).
func IsHotKey(key []byte) bool {
	return len(key) > 0 && (key[0] == prefixAccount || key[0] == prefixBranch || key[0] == prefixList)
}

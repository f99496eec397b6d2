package ledger

import (
	"errors"
	"fmt"
	"math/bits"

	"github.com/shardledger/shardledger/internal/wire"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Reads that scan: open work for the shard's resolver, and totals for audits.

// OpenWorkMax bounds how many prepared branches and pending transfers one query returns.
const OpenWorkMax = 10_000

// ErrScanFull ends a scan that has all it may return (a cap reached): Scan passes it
// back like any error of fn, and the caller that returned it treats it as success.
var ErrScanFull = errors.New("scan stopped: the cap is reached")

// ReadOpenWork lists prepared branches and open pending transfers (at most OpenWorkMax
// of each). Each scan stops at its cap: it reads and decodes nothing past it.
func ReadOpenWork(s Scanner) (prepared []*raftv1.StoredBranch, pending []*raftv1.StoredTransfer, err error) {
	err = scanPrepared(s, func(b *raftv1.StoredBranch) error {
		prepared = append(prepared, b)
		if len(prepared) >= OpenWorkMax {
			return ErrScanFull
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrScanFull) {
		return nil, nil, err
	}
	err = scanIndex(s, prefixPending, func(v []byte) error {
		t := &raftv1.StoredTransfer{}
		if err := wire.Unmarshal(v, t); err != nil {
			return fmt.Errorf("decode pending transfer: %w", err)
		}
		pending = append(pending, t)
		if len(pending) >= OpenWorkMax {
			return ErrScanFull
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrScanFull) {
		return nil, nil, err
	}
	return prepared, pending, nil
}

// scanIndex follows every index entry under prefix to the record it names.
func scanIndex(s Scanner, prefix byte, fn func(record []byte) error) error {
	return s.Scan([]byte{prefix}, func(_, target []byte) error {
		v, ok, err := s.Get(target)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("index entry names missing record %q", target)
		}
		return fn(v)
	})
}

// ReadTotals sums every account of the shard and what open work holds. At quiescence a
// shard's pending sums equal what its prepared branches and pending transfers hold.
func ReadTotals(s Scanner) (*raftv1.Totals, error) {
	t := &raftv1.Totals{}
	add := func(x *uint64, v uint64) error {
		var c uint64
		*x, c = bits.Add64(*x, v, 0)
		if c != 0 {
			return fmt.Errorf("totals overflow")
		}
		return nil
	}
	err := s.Scan([]byte{prefixAccount}, func(_, v []byte) error {
		a := &ledgerv1.Account{}
		if err := wire.Unmarshal(v, a); err != nil {
			return fmt.Errorf("decode account: %w", err)
		}
		t.Accounts++
		for _, p := range []struct {
			x *uint64
			v uint64
		}{{&t.DebitsPosted, a.DebitsPosted}, {&t.CreditsPosted, a.CreditsPosted}, {&t.DebitsPending, a.DebitsPending}, {&t.CreditsPending, a.CreditsPending}} {
			if err := add(p.x, p.v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = scanPrepared(s, func(b *raftv1.StoredBranch) error {
		t.PreparedBranches++
		if b.Branch.GetDebit() {
			return add(&t.BranchDebitsHeld, b.Branch.GetAmount())
		}
		return add(&t.BranchCreditsHeld, b.Branch.GetAmount())
	})
	if err != nil {
		return nil, err
	}
	err = scanIndex(s, prefixPending, func(v []byte) error {
		p := &raftv1.StoredTransfer{}
		if err := wire.Unmarshal(v, p); err != nil {
			return fmt.Errorf("decode pending transfer: %w", err)
		}
		t.PendingTransfers++
		return add(&t.PendingTransfersHeld, p.PendingAmount)
	})
	return t, err
}

// CheckTotals reports what breaks the shard-local double-entry invariants at quiescence
// (no transaction in flight): pending sums equal what open work holds.
func CheckTotals(t *raftv1.Totals) []string {
	var v []string
	if t.DebitsPending != t.BranchDebitsHeld+t.PendingTransfersHeld {
		v = append(v, fmt.Sprintf("debits_pending %d != held by prepared debit branches %d + pending transfers %d",
			t.DebitsPending, t.BranchDebitsHeld, t.PendingTransfersHeld))
	}
	if t.CreditsPending != t.BranchCreditsHeld+t.PendingTransfersHeld {
		v = append(v, fmt.Sprintf("credits_pending %d != held by prepared credit branches %d + pending transfers %d",
			t.CreditsPending, t.BranchCreditsHeld, t.PendingTransfersHeld))
	}
	return v
}

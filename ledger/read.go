package ledger

import (
	"fmt"

	"github.com/shardledger/shardledger/internal/wire"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// ReadAccounts reads accounts by id from committed state.
func ReadAccounts(r Reader, ids []string) (found []*ledgerv1.Account, notFound []string, err error) {
	st, err := LoadShardState(r)
	if err != nil {
		return nil, nil, err
	}
	if st.SlotCount == 0 {
		return nil, ids, nil
	}
	for _, id := range ids {
		v, ok, err := r.Get(accountKey(SlotOf(id, st.SlotCount), id))
		if err != nil {
			return nil, nil, fmt.Errorf("read account %q: %w", id, err)
		}
		if !ok {
			notFound = append(notFound, id)
			continue
		}
		acc := &ledgerv1.Account{}
		if err := wire.Unmarshal(v, acc); err != nil {
			return nil, nil, fmt.Errorf("decode account %q: %w", id, err)
		}
		found = append(found, acc)
	}
	return found, notFound, nil
}

// ReadTransfers reads transfers (successful outcomes only) by id from committed state.
func ReadTransfers(r Reader, ids []string) (found []*ledgerv1.Transfer, notFound []string, err error) {
	for _, id := range ids {
		t, err := readTransfer(r, id)
		if err != nil {
			return nil, nil, err
		}
		if t == nil {
			notFound = append(notFound, id)
			continue
		}
		found = append(found, t)
	}
	return found, notFound, nil
}

func readTransfer(r Reader, id string) (*ledgerv1.Transfer, error) {
	sk, ok, err := r.Get(indexKey(id))
	if err != nil {
		return nil, fmt.Errorf("read transfer index %q: %w", id, err)
	}
	if !ok {
		return nil, nil
	}
	v, ok, err := r.Get(append(append([]byte{prefixTransfer}, sk[1:]...), id...))
	if err != nil {
		return nil, fmt.Errorf("read transfer %q: %w", id, err)
	}
	if !ok {
		return nil, fmt.Errorf("transfer %q is indexed but has no record", id)
	}
	rec := &raftv1.StoredTransfer{}
	if err := wire.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("decode transfer %q: %w", id, err)
	}
	if rec.Status != stCreated {
		return nil, nil
	}
	return Display(rec), nil
}

// Display is a stored transfer as clients see it: effective amount and currency filled in.
func Display(rec *raftv1.StoredTransfer) *ledgerv1.Transfer {
	t := rec.Transfer.CloneVT()
	t.Amount = rec.Amount
	t.Currency = rec.Currency
	return t
}

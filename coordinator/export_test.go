package coordinator

import (
	"fmt"
	"slices"

	"github.com/shardledger/shardledger/internal/wire"
	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// FlatHash hashes a coordinator store's state with its open index flattened: where the
// index keeps a record (which open list, the lists' numbering) depends on how commands
// were grouped into entries, what it holds does not. Every other key is hashed as
// stored, the records and the group state without their list numbers; then the ids of
// the open transactions, sorted.
func FlatHash(s *ledger.MemStore) ([]byte, error) {
	h := ledger.NewHasher()
	err := s.Scan(nil, func(k, v []byte) error {
		switch {
		case len(k) == 0:
		case k[0] == prefixList || k[0] == prefixListOpen || k[0] == prefixOpen:
			return nil
		case k[0] == prefixTxn:
			rec := &raftv1.TxnRecord{}
			if err := wire.Unmarshal(v, rec); err != nil {
				return fmt.Errorf("decode %q: %w", k, err)
			}
			rec.OpenList = 0
			var err error
			if v, err = wire.Marshal(rec); err != nil {
				return err
			}
		case k[0] == prefixState:
			st := &raftv1.CoordState{}
			if err := wire.Unmarshal(v, st); err != nil {
				return fmt.Errorf("decode state: %w", err)
			}
			st.OpenListSeq = 0
			var err error
			if v, err = wire.Marshal(st); err != nil {
				return err
			}
		}
		h.Add(k, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	recs, err := ReadOpen(s)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(recs))
	for _, r := range recs {
		ids = append(ids, r.TxnId)
	}
	slices.Sort(ids)
	for _, id := range ids {
		h.Add([]byte{prefixOpen}, []byte(id))
	}
	return h.Sum(), nil
}

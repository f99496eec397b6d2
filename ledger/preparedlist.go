package ledger

import (
	"fmt"

	"github.com/shardledger/shardledger/internal/wire"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// Prepared branches are indexed (the shard's resolver asks the coordinator about old
// ones, and audits sum what they hold) by prepared lists: a PrepareBranches command that
// prepares any branch numbers one list (the shard state's prepared_list_seq, plus one)
// holding the keys of the branches it prepared, and each branch records its list's
// number (StoredBranch.prepared_list). Resolving a branch counts it off its list. The
// router commits a request's branches in one command per shard, as it prepared them, so
// the index costs one write and one delete per command, for any number of branches,
// where one index key per branch took a write and a delete each (4 of the ~17 keys a
// cross-shard transfer wrote).
//
// Branches prepared under the earlier layout (prepared_list 0) keep their own index key
// under prefixPrepared until they are resolved; readers scan both.
func preparedLists() ListIndex { return ListIndex{List: prefixList, Open: prefixListOpen} }

// unindex takes a branch leaving PREPARED (committed or aborted) off its index.
func (a *Applier) unindex(rec *raftv1.StoredBranch) error {
	b := rec.Branch
	if rec.PreparedList == 0 {
		a.ov.Delete(preparedKey(branchKey(a.slot(b.AccountId), b.TxnId, b.Index)))
		return nil
	}
	if err := preparedLists().Close(a.ov, rec.PreparedList); err != nil {
		return fmt.Errorf("resolve branch %q/%d: prepared %w", b.TxnId, b.Index, err)
	}
	return nil
}

// scanPrepared calls fn with every prepared branch of the shard (both layouts).
func scanPrepared(s Scanner, fn func(b *raftv1.StoredBranch) error) error {
	decode := func(v []byte) (*raftv1.StoredBranch, error) {
		b := &raftv1.StoredBranch{}
		if err := wire.Unmarshal(v, b); err != nil {
			return nil, fmt.Errorf("decode branch: %w", err)
		}
		return b, nil
	}
	err := preparedLists().Scan(s, func(bk []byte) error {
		v, ok, err := s.Get(bk)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("a prepared list names missing branch %q", bk)
		}
		b, err := decode(v)
		if err != nil {
			return err
		}
		if b.State != brPrepared {
			return nil // resolved already; its list still holds others
		}
		return fn(b)
	})
	if err != nil {
		return err
	}
	return scanIndex(s, prefixPrepared, func(v []byte) error {
		b, err := decode(v)
		if err != nil {
			return err
		}
		return fn(b)
	})
}

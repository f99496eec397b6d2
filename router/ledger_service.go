package router

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"connectrpc.com/connect"

	"github.com/shardledger/shardledger/ledger"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
	"github.com/shardledger/shardledger/proto/gen/ledger/v1/ledgerv1connect"
)

// RoundsMax bounds how often one request is re-routed after WRONG_SHARD refusals.
const RoundsMax = 8

var _ ledgerv1connect.LedgerServiceHandler = (*Router)(nil)

func (r *Router) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.opts.RequestTimeout)
}

func checkCount(field string, n int) error {
	if n == 0 {
		return invalid(field, errors.New("must not be empty"))
	}
	if n > ledger.BatchItemsMax {
		return invalid(field, fmt.Errorf("at most %d items per request, got %d", ledger.BatchItemsMax, n))
	}
	return nil
}

// unit is a group of request items that must go to one shard in one command (one item,
// or a linked chain).
type unit struct {
	items []int
	// ids are the account ids whose slots decide the shard ("" entries ignored).
	ids []string
	// fallback decides the shard when ids are all empty.
	fallback string
}

// route assigns units to shards with the current map.
func route(m *raftv1.ShardMap, units []unit) (map[uint64][]int, error) {
	out := map[uint64][]int{}
	for ui, u := range units {
		shard := uint64(0)
		for _, id := range u.ids {
			if id == "" {
				continue
			}
			s := m.SlotShard[ledger.SlotOf(id, m.SlotCount)]
			if shard != 0 && s != shard {
				return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
					"item %d: its accounts live on shards %d and %d and it was routed as a single-shard command (nothing was applied)",
					u.items[0], shard, s))
			}
			shard = s
		}
		if shard == 0 {
			shard = m.SlotShard[ledger.SlotOf(u.fallback, m.SlotCount)]
		}
		out[shard] = append(out[shard], ui)
	}
	return out, nil
}

// run executes units on their shards in parallel. build makes the command for a list of
// units; done receives each shard command's result. Units refused with WRONG_SHARD are
// re-routed with a fresh map; all routing is checked before anything is proposed.
func (r *Router) run(ctx context.Context, units []unit, build func(us []int) (*raftv1.Command, int),
	done func(us []int, res *raftv1.CommandResult)) error {
	todo := make([]int, len(units))
	for i := range todo {
		todo[i] = i
	}
	m, err := r.Map(ctx)
	if err != nil {
		return toConnect(err)
	}
	for round := 0; len(todo) > 0; round++ {
		if round >= RoundsMax {
			return connect.NewError(connect.CodeUnavailable, errors.New("the shard map kept changing; retry with the same ids"))
		}
		sub := make([]unit, len(todo))
		for i, ui := range todo {
			sub[i] = units[ui]
		}
		byShard, err := route(m, sub)
		if err != nil {
			return err
		}
		var (
			mu       sync.Mutex
			wg       sync.WaitGroup
			again    []int
			firstErr error
			maxEpoch uint64
		)
		for shard, idx := range byShard {
			us := make([]int, len(idx))
			for i, k := range idx {
				us[i] = todo[k]
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd, size := build(us)
				res, err := r.exec(ctx, shard, cmd, size)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					if firstErr == nil {
						firstErr = err
					}
				case res.Refusal == raftv1.Refusal_REFUSAL_WRONG_SHARD || res.Refusal == raftv1.Refusal_REFUSAL_NOT_INITIALIZED:
					again = append(again, us...)
					maxEpoch = max(maxEpoch, res.Epoch, m.Epoch)
				case res.Refusal != raftv1.Refusal_REFUSAL_UNSPECIFIED:
					if firstErr == nil {
						firstErr = connect.NewError(connect.CodeInternal, fmt.Errorf("shard %d refused the command: %s", shard, res.Message))
					}
				default:
					done(us, res)
				}
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return toConnect(firstErr)
		}
		todo = again
		if len(todo) > 0 {
			if err := sleep(ctx, backoff(round)); err != nil {
				return toConnect(err)
			}
			if m, err = r.RefreshMap(ctx, maxEpoch); err != nil {
				return toConnect(err)
			}
		}
	}
	return nil
}

// CreateAccounts creates accounts; one result per input, same order.
func (r *Router) CreateAccounts(ctx context.Context, req *connect.Request[ledgerv1.CreateAccountsRequest]) (*connect.Response[ledgerv1.CreateAccountsResponse], error) {
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	accs := req.Msg.GetAccounts()
	if err := checkCount("accounts", len(accs)); err != nil {
		return nil, err
	}
	var vs violations
	for i, a := range accs {
		vs.add(fmt.Sprintf("accounts[%d].id", i), ledger.ValidateID(a.GetId()))
		vs.add(fmt.Sprintf("accounts[%d].currency", i), ledger.ValidateCurrency(a.GetCurrency()))
		vs.add(fmt.Sprintf("accounts[%d].user_data", i), ledger.ValidateUserData(a.GetUserData()))
	}
	if err := vs.err(); err != nil {
		return nil, err
	}
	units := make([]unit, len(accs))
	for i, a := range accs {
		units[i] = unit{items: []int{i}, ids: []string{a.GetId()}}
	}
	results := make([]*ledgerv1.AccountResult, len(accs))
	var mu sync.Mutex
	err := r.run(ctx, units, func(us []int) (*raftv1.Command, int) {
		c := &raftv1.CreateAccounts{Accounts: make([]*ledgerv1.Account, len(us))}
		for i, u := range us {
			c.Accounts[i] = accs[u]
		}
		return &raftv1.Command{Op: &raftv1.Command_CreateAccounts{CreateAccounts: c}}, len(us)
	}, func(us []int, res *raftv1.CommandResult) {
		mu.Lock()
		defer mu.Unlock()
		for i, u := range us {
			if i < len(res.Accounts) {
				results[u] = res.Accounts[i]
			}
		}
	})
	if err != nil {
		return nil, err
	}
	for i, x := range results {
		if x == nil {
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("no result for account %d", i))
		}
	}
	return connect.NewResponse(&ledgerv1.CreateAccountsResponse{Results: results}), nil
}

// CreateTransfers posts transfers; one result per input, same order.
func (r *Router) CreateTransfers(ctx context.Context, req *connect.Request[ledgerv1.CreateTransfersRequest]) (*connect.Response[ledgerv1.CreateTransfersResponse], error) {
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	in := req.Msg.GetTransfers()
	if err := checkCount("transfers", len(in)); err != nil {
		return nil, err
	}
	var vs violations
	for i, t := range in {
		vs.add(fmt.Sprintf("transfers[%d]", i), ledger.ValidateTransfer(t))
	}
	if in[len(in)-1].GetLinked() {
		vs.add(fmt.Sprintf("transfers[%d].linked", len(in)-1), errors.New("the last transfer of a request cannot be linked: the chain is not closed"))
	}
	if err := vs.err(); err != nil {
		return nil, err
	}
	ts := make([]*ledgerv1.Transfer, len(in))
	for i, t := range in {
		ts[i] = t.CloneVT()
	}
	if err := r.fillPendingAccounts(ctx, ts); err != nil {
		return nil, err
	}
	var units []unit
	for i := 0; i < len(ts); {
		u := unit{fallback: ts[i].GetId()}
		for {
			u.items = append(u.items, i)
			u.ids = append(u.ids, ts[i].GetDebitAccountId(), ts[i].GetCreditAccountId())
			i++
			if !ts[i-1].GetLinked() {
				break
			}
		}
		units = append(units, u)
	}
	m, err := r.Map(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	// Chains within one shard go to it; chains across shards (and posts/voids of
	// cross-shard pending transfers) go through a coordinator. Shapes the coordinator
	// does not take are refused before anything is applied.
	var local, cross []unit
	for _, u := range units {
		if isCross(m, u) {
			if err := checkCrossUnit(ts, u); err != nil {
				return nil, err
			}
			cross = append(cross, u)
		} else {
			local = append(local, u)
		}
	}
	// kept: slots of transactions answered as committed, which the router finishes
	// after the answer and releases then.
	kept := 0
	if len(cross) > 0 {
		if err := r.reserveTxns(ctx, len(cross)); err != nil {
			return nil, err
		}
		defer func() { r.releaseTxns(len(cross) - kept) }()
	}
	results := make([]*ledgerv1.TransferResult, len(ts))
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		crossErr error
	)
	if len(cross) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chains := make([][]*ledgerv1.Transfer, len(cross))
			for c, u := range cross {
				chains[c] = make([]*ledgerv1.Transfer, len(u.items))
				for k, i := range u.items {
					chains[c][k] = ts[i]
				}
			}
			res, errs, finishing := r.runTxns(ctx, m, chains)
			mu.Lock()
			defer mu.Unlock()
			kept = finishing
			for c, u := range cross {
				if errs[c] != nil {
					if crossErr == nil {
						crossErr = errs[c]
					}
					continue
				}
				for k, i := range u.items {
					if k < len(res[c]) {
						results[i] = res[c][k]
					}
				}
			}
		}()
	}
	err = nil
	if len(local) > 0 {
		err = r.run(ctx, local, func(us []int) (*raftv1.Command, int) {
			c := &raftv1.CreateTransfers{}
			for _, u := range us {
				for _, i := range local[u].items {
					c.Transfers = append(c.Transfers, ts[i])
				}
			}
			return &raftv1.Command{Op: &raftv1.Command_CreateTransfers{CreateTransfers: c}}, len(c.Transfers)
		}, func(us []int, res *raftv1.CommandResult) {
			mu.Lock()
			defer mu.Unlock()
			k := 0
			for _, u := range us {
				for _, i := range local[u].items {
					if k < len(res.Transfers) {
						results[i] = res.Transfers[k]
					}
					k++
				}
			}
		})
	}
	wg.Wait()
	if err == nil && crossErr != nil {
		err = toConnect(crossErr)
	}
	if err != nil {
		return nil, err
	}
	for i, x := range results {
		if x == nil {
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("no result for transfer %d", i))
		}
	}
	return connect.NewResponse(&ledgerv1.CreateTransfersResponse{Results: results}), nil
}

// fillPendingAccounts fills the accounts of posts and voids that name none, from the
// pending transfer (needed to route them). One left empty is answered PENDING_NOT_FOUND.
func (r *Router) fillPendingAccounts(ctx context.Context, ts []*ledgerv1.Transfer) error {
	var ids []string
	for _, t := range ts {
		if p := pendingRef(t); p != "" && t.GetDebitAccountId() == "" {
			ids = append(ids, p)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	found, _, err := r.lookupTransfers(ctx, ids)
	if err != nil {
		return err
	}
	byID := map[string]*ledgerv1.Transfer{}
	for _, t := range found {
		byID[t.GetId()] = t
	}
	for _, t := range ts {
		if p := pendingRef(t); p != "" && t.GetDebitAccountId() == "" {
			if pt, ok := byID[p]; ok {
				t.DebitAccountId = pt.GetDebitAccountId()
				if t.GetCreditAccountId() == "" {
					t.CreditAccountId = pt.GetCreditAccountId()
				}
			}
		}
	}
	return nil
}

func pendingRef(t *ledgerv1.Transfer) string {
	if t.GetPostPendingId() != "" {
		return t.GetPostPendingId()
	}
	return t.GetVoidPendingId()
}

// GetAccounts reads accounts, linearizable unless CONSISTENCY_STALE.
func (r *Router) GetAccounts(ctx context.Context, req *connect.Request[ledgerv1.GetAccountsRequest]) (*connect.Response[ledgerv1.GetAccountsResponse], error) {
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	ids := req.Msg.GetIds()
	if err := checkIDs(ids); err != nil {
		return nil, err
	}
	stale := req.Msg.GetConsistency() == ledgerv1.Consistency_CONSISTENCY_STALE
	m, err := r.Map(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	byShard := map[uint64][]string{}
	for _, id := range ids {
		s := m.SlotShard[ledger.SlotOf(id, m.SlotCount)]
		byShard[s] = append(byShard[s], id)
	}
	found := map[string]*ledgerv1.Account{}
	err = r.fanOut(ctx, byShard, stale, accountsQuery, func(res *raftv1.QueryResult) {
		for _, a := range res.Accounts {
			found[a.GetId()] = a
		}
	})
	if err != nil {
		return nil, err
	}
	out := &ledgerv1.GetAccountsResponse{}
	for _, id := range ids {
		if a, ok := found[id]; ok {
			out.Accounts = append(out.Accounts, a)
		} else {
			out.NotFound = append(out.NotFound, id)
		}
	}
	return connect.NewResponse(out), nil
}

func checkIDs(ids []string) error {
	if err := checkCount("ids", len(ids)); err != nil {
		return err
	}
	var vs violations
	for i, id := range ids {
		vs.add(fmt.Sprintf("ids[%d]", i), ledger.ValidateID(id))
	}
	return vs.err()
}

// fanOut runs an id query on several shards in parallel; collect runs under a lock.
func (r *Router) fanOut(ctx context.Context, byShard map[uint64][]string, stale bool,
	query func(ids []string) *raftv1.Query, collect func(*raftv1.QueryResult)) error {
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		firstErr error
	)
	for shard, ids := range byShard {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.read(ctx, shard, query(ids), stale)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			collect(res.(*raftv1.QueryResult))
		}()
	}
	wg.Wait()
	return toConnect(firstErr)
}

func accountsQuery(ids []string) *raftv1.Query {
	return &raftv1.Query{Op: &raftv1.Query_Accounts{Accounts: &raftv1.IdList{Ids: ids}}}
}

func transfersQuery(ids []string) *raftv1.Query {
	return &raftv1.Query{Op: &raftv1.Query_Transfers{Transfers: &raftv1.IdList{Ids: ids}}}
}

// lookupTransfers finds transfers by id on every shard and coordinator group (a
// transfer's record lives with its debit account, or with its coordinator when it spans
// shards; the id alone names neither).
func (r *Router) lookupTransfers(ctx context.Context, ids []string) ([]*ledgerv1.Transfer, []string, error) {
	m, err := r.Map(ctx)
	if err != nil {
		return nil, nil, toConnect(err)
	}
	byShard := map[uint64][]string{}
	for _, s := range m.Shards {
		byShard[s.ShardId] = ids
	}
	for _, g := range m.CoordinatorGroups {
		byShard[g] = ids
	}
	var found map[string]*ledgerv1.Transfer
	for attempt := 0; ; attempt++ {
		found = map[string]*ledgerv1.Transfer{}
		var undecided []*raftv1.TxnRecord
		err = r.fanOut(ctx, byShard, false, transfersQuery, func(res *raftv1.QueryResult) {
			for _, t := range res.Transfers {
				found[t.GetId()] = t
			}
			undecided = append(undecided, res.Txns...)
		})
		if err != nil {
			return nil, nil, err
		}
		if len(undecided) == 0 || attempt > 0 {
			break
		}
		// A begun transaction with no decision may be committed already (its router
		// answered before logging the decision): settle it, then read again, so a
		// client always reads the transfers it was told are created.
		if err := r.settle(ctx, m, undecided); err != nil {
			return nil, nil, toConnect(err)
		}
	}
	var out []*ledgerv1.Transfer
	var notFound []string
	for _, id := range ids {
		if t, ok := found[id]; ok {
			out = append(out, t)
		} else {
			notFound = append(notFound, id)
		}
	}
	return out, notFound, nil
}

// GetTransfers looks transfers up by id.
func (r *Router) GetTransfers(ctx context.Context, req *connect.Request[ledgerv1.GetTransfersRequest]) (*connect.Response[ledgerv1.GetTransfersResponse], error) {
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	if err := checkIDs(req.Msg.GetIds()); err != nil {
		return nil, err
	}
	found, notFound, err := r.lookupTransfers(ctx, req.Msg.GetIds())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.GetTransfersResponse{Transfers: found, NotFound: notFound}), nil
}

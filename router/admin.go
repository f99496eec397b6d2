package router

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/shardledger/shardledger/internal/node"
	"github.com/shardledger/shardledger/ledger"
	"github.com/shardledger/shardledger/meta"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
	"github.com/shardledger/shardledger/proto/gen/ledger/v1/ledgerv1connect"
)

var _ ledgerv1connect.AdminServiceHandler = (*Admin)(nil)

// Admin serves AdminService over a router.
type Admin struct{ r *Router }

// Admin returns the AdminService handler.
func (r *Router) Admin() *Admin { return &Admin{r: r} }

// GetShardMap returns the shard map (a linearizable read of the meta group).
func (a *Admin) GetShardMap(ctx context.Context, _ *connect.Request[ledgerv1.GetShardMapRequest]) (*connect.Response[ledgerv1.GetShardMapResponse], error) {
	ctx, cancel := a.r.withTimeout(ctx)
	defer cancel()
	m, err := a.r.RefreshMap(ctx, ^uint64(0))
	if err != nil {
		return nil, toConnect(err)
	}
	out := &ledgerv1.GetShardMapResponse{Epoch: m.Epoch, SlotCount: m.SlotCount, Ranges: meta.Ranges(m)}
	for _, s := range m.Shards {
		out.Shards = append(out.Shards, &ledgerv1.Shard{Id: s.ShardId, Replicas: s.Nodes})
	}
	return connect.NewResponse(out), nil
}

// GetClusterStatus reports nodes and every raft group with its leader and applied index.
func (a *Admin) GetClusterStatus(ctx context.Context, _ *connect.Request[ledgerv1.GetClusterStatusRequest]) (*connect.Response[ledgerv1.GetClusterStatusResponse], error) {
	ctx, cancel := a.r.withTimeout(ctx)
	defer cancel()
	m, err := a.r.RefreshMap(ctx, ^uint64(0))
	if err != nil {
		return nil, toConnect(err)
	}
	reach := map[uint64]bool{}
	for _, b := range a.r.backends {
		reach[b.ID()] = true
	}
	out := &ledgerv1.GetClusterStatusResponse{ShardMapEpoch: m.Epoch}
	var all []uint64
	for _, n := range m.Nodes {
		out.Nodes = append(out.Nodes, &ledgerv1.Node{Id: n.Id, RaftAddress: n.RaftAddress, Zone: n.Zone, Reachable: reach[n.Id]})
		all = append(all, n.Id)
	}
	leader := func(group uint64) (uint64, uint64) {
		for _, b := range a.r.backends {
			if l, t, ok := b.Leader(group); ok {
				return l, t
			}
		}
		return 0, 0
	}
	g := &ledgerv1.Group{Id: node.MetaShardID, Kind: ledgerv1.GroupKind_GROUP_KIND_META, Replicas: all}
	g.Leader, g.Term = leader(node.MetaShardID)
	if res, err := a.r.read(ctx, node.MetaShardID, meta.Query{}, true); err == nil {
		g.AppliedIndex = res.(meta.QueryResult).Applied
	}
	out.Groups = append(out.Groups, g)
	shards := append([]*raftv1.ShardReplicas(nil), m.Shards...)
	sort.Slice(shards, func(i, j int) bool { return shards[i].ShardId < shards[j].ShardId })
	for _, s := range shards {
		g := &ledgerv1.Group{Id: s.ShardId, Kind: ledgerv1.GroupKind_GROUP_KIND_SHARD, Replicas: s.Nodes,
			SlotCount: uint32(len(meta.SlotsOf(m, s.ShardId)))}
		g.Leader, g.Term = leader(s.ShardId)
		q := &raftv1.Query{Op: &raftv1.Query_ShardState{ShardState: true}}
		if res, err := a.r.read(ctx, s.ShardId, q, true); err == nil {
			g.AppliedIndex = res.(*raftv1.QueryResult).AppliedIndex
		}
		out.Groups = append(out.Groups, g)
	}
	for _, id := range m.CoordinatorGroups {
		g := &ledgerv1.Group{Id: id, Kind: ledgerv1.GroupKind_GROUP_KIND_COORDINATOR, Replicas: all}
		g.Leader, g.Term = leader(id)
		q := &raftv1.Query{Op: &raftv1.Query_ShardState{ShardState: true}}
		if res, err := a.r.read(ctx, id, q, true); err == nil {
			g.AppliedIndex = res.(*raftv1.QueryResult).AppliedIndex
		}
		out.Groups = append(out.Groups, g)
	}
	return connect.NewResponse(out), nil
}

// proposeDirect proposes to a group without batching (bootstrap, meta), with retries.
func (r *Router) proposeDirect(ctx context.Context, group uint64, data []byte) (uint64, []byte, error) {
	var last error
	for attempt := 0; attempt < r.opts.RetryMax; attempt++ {
		i, b := r.backend(group)
		pctx, cancel := context.WithTimeout(ctx, r.opts.ProposalTimeout)
		res, err := b.Propose(pctx, group, data)
		cancel()
		if err == nil {
			return res.Value, res.Data, nil
		}
		last = err
		if !retryable(err) {
			break
		}
		r.demote(group, i)
		if err := sleep(ctx, backoff(attempt)); err != nil {
			break
		}
	}
	return 0, nil, fmt.Errorf("propose to group %d: %w", group, last)
}

// Bootstrap makes sure the cluster has its initial shard map and that every shard has
// learned its slots from a logged entry. Every step is conditional, so any number of
// nodes may run it at once, and again at every start.
func (r *Router) Bootstrap(ctx context.Context, initial *raftv1.ShardMap) error {
	if err := meta.Validate(initial); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	res, err := r.read(ctx, node.MetaShardID, meta.Query{}, false)
	if err != nil {
		return fmt.Errorf("bootstrap: read shard map: %w", err)
	}
	m := res.(meta.QueryResult).Map
	if m.GetEpoch() == 0 {
		data, _ := proto.Marshal(&raftv1.MetaCommand{Op: &raftv1.MetaCommand_Init{Init: initial}})
		code, msg, err := r.proposeDirect(ctx, node.MetaShardID, data)
		if err != nil {
			return fmt.Errorf("bootstrap: init shard map: %w", err)
		}
		if code == meta.ResultRefused {
			return fmt.Errorf("bootstrap: shard map refused: %s", msg)
		}
		if m, err = r.RefreshMap(ctx, 0); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
	}
	r.shardMap.Store(m)
	for _, s := range m.Shards {
		cmd := &raftv1.Command{Op: &raftv1.Command_AssignSlots{AssignSlots: &raftv1.AssignSlots{
			Epoch: m.Epoch, SlotCount: m.SlotCount, Slots: meta.SlotsOf(m, s.ShardId)}}}
		res, err := r.exec(ctx, s.ShardId, cmd, 1)
		if err != nil {
			return fmt.Errorf("bootstrap: assign slots to shard %d: %w", s.ShardId, err)
		}
		if res.Refusal != raftv1.Refusal_REFUSAL_UNSPECIFIED {
			return fmt.Errorf("bootstrap: shard %d refused its slots: %s", s.ShardId, res.Message)
		}
		if res.Epoch < m.Epoch {
			return errors.New("bootstrap: shard did not take the map's epoch")
		}
	}
	return nil
}

// Audit checks the double-entry invariants across every shard: per shard, pending sums
// equal what prepared branches and pending transfers hold (always true, entry by entry);
// globally, debits equal credits, posted and pending (true at quiescence: while a
// cross-shard transaction is between its branches the global sums may differ).
func (a *Admin) Audit(ctx context.Context, _ *connect.Request[ledgerv1.AuditRequest]) (*connect.Response[ledgerv1.AuditResponse], error) {
	ctx, cancel := a.r.withTimeout(ctx)
	defer cancel()
	m, err := a.r.RefreshMap(ctx, ^uint64(0))
	if err != nil {
		return nil, toConnect(err)
	}
	out := &ledgerv1.AuditResponse{}
	for _, s := range m.Shards {
		res, err := a.r.Query(ctx, s.ShardId, &raftv1.Query{Op: &raftv1.Query_Totals{Totals: true}}, false)
		if err != nil {
			return nil, toConnect(fmt.Errorf("totals of shard %d: %w", s.ShardId, err))
		}
		t := res.Totals
		for _, v := range ledger.CheckTotals(t) {
			out.Violations = append(out.Violations, fmt.Sprintf("shard %d: %s", s.ShardId, v))
		}
		out.Accounts += t.Accounts
		out.DebitsPosted += t.DebitsPosted
		out.CreditsPosted += t.CreditsPosted
		out.DebitsPending += t.DebitsPending
		out.CreditsPending += t.CreditsPending
		out.PreparedBranches += t.PreparedBranches
		out.PendingTransfers += t.PendingTransfers
	}
	for _, g := range m.CoordinatorGroups {
		res, err := a.r.Query(ctx, g, &raftv1.Query{Op: &raftv1.Query_OpenTxns{OpenTxns: true}}, false)
		if err != nil {
			return nil, toConnect(fmt.Errorf("open transactions of group %d: %w", g, err))
		}
		out.OpenTransactions += uint64(len(res.Txns))
	}
	if out.DebitsPosted != out.CreditsPosted {
		out.Violations = append(out.Violations, fmt.Sprintf("debits_posted %d != credits_posted %d", out.DebitsPosted, out.CreditsPosted))
	}
	if out.DebitsPending != out.CreditsPending {
		out.Violations = append(out.Violations, fmt.Sprintf("debits_pending %d != credits_pending %d", out.DebitsPending, out.CreditsPending))
	}
	out.Ok = len(out.Violations) == 0
	return connect.NewResponse(out), nil
}

// ListInDoubtTransactionsMax bounds one answer.
const ListInDoubtTransactionsMax = 1000

// ListInDoubtTransactions lists transactions their coordinators have not forgotten.
func (a *Admin) ListInDoubtTransactions(ctx context.Context, req *connect.Request[ledgerv1.ListInDoubtTransactionsRequest]) (*connect.Response[ledgerv1.ListInDoubtTransactionsResponse], error) {
	ctx, cancel := a.r.withTimeout(ctx)
	defer cancel()
	limit := int(req.Msg.GetLimit())
	if limit == 0 || limit > ListInDoubtTransactionsMax {
		limit = ListInDoubtTransactionsMax
	}
	m, err := a.r.RefreshMap(ctx, ^uint64(0))
	if err != nil {
		return nil, toConnect(err)
	}
	out := &ledgerv1.ListInDoubtTransactionsResponse{}
	for _, g := range m.CoordinatorGroups {
		res, err := a.r.Query(ctx, g, &raftv1.Query{Op: &raftv1.Query_OpenTxns{OpenTxns: true}}, false)
		if err != nil {
			return nil, toConnect(fmt.Errorf("open transactions of group %d: %w", g, err))
		}
		for _, rec := range res.Txns {
			if len(out.Transactions) >= limit {
				break
			}
			t := &ledgerv1.InDoubtTransaction{Id: rec.TxnId, CoordinatorGroup: g,
				Decision: ledgerv1.TransactionDecision(rec.Decision),
				BegunAt:  timestamppb.New(time.Unix(0, rec.BegunAtUnixNano).UTC())}
			if rec.ExpiresAtUnixNano > 0 {
				t.ExpiresAt = timestamppb.New(time.Unix(0, rec.ExpiresAtUnixNano).UTC())
			}
			for _, tr := range rec.Transfers {
				t.TransferIds = append(t.TransferIds, tr.GetId())
			}
			out.Transactions = append(out.Transactions, t)
		}
	}
	return connect.NewResponse(out), nil
}

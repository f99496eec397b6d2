package router

import (
	"context"

	"github.com/shardledger/shardledger/coordinator"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

type backgroundKey struct{}

// withBackground marks the commands proposed under ctx as background work: follow-up
// work nobody waits on, which rides in the entries of clients' commands (see
// Options.BackgroundLinger).
func withBackground(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

func isBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}

// Background is the router as the coordinator's agents (drivers, resolvers) see it:
// their commands are background work (Options.BackgroundLinger).
func (r *Router) Background() coordinator.Cluster { return backgroundCluster{r} }

type backgroundCluster struct{ r *Router }

func (b backgroundCluster) Propose(ctx context.Context, group uint64, cmd *raftv1.Command) (*raftv1.CommandResult, error) {
	return b.r.Propose(withBackground(ctx), group, cmd)
}

func (b backgroundCluster) PrepareBranches(ctx context.Context, branches []*raftv1.Branch) ([]*raftv1.Vote, error) {
	return b.r.PrepareBranches(withBackground(ctx), branches)
}

func (b backgroundCluster) ResolveBranches(ctx context.Context, refs []*raftv1.BranchRef, commit bool) ([]*raftv1.Vote, error) {
	return b.r.ResolveBranches(withBackground(ctx), refs, commit)
}

func (b backgroundCluster) Query(ctx context.Context, group uint64, q *raftv1.Query, stale bool) (*raftv1.QueryResult, error) {
	return b.r.Query(ctx, group, q, stale)
}

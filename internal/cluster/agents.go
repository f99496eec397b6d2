package cluster

import (
	"context"
	"sync"

	"github.com/shardledger/shardledger/coordinator"
	"github.com/shardledger/shardledger/internal/node"
)

// AgentOptions configure the background work a node runs: one coordinator driver per
// coordinator group and the participant-side resolver.
type AgentOptions struct {
	Driver   coordinator.DriverOptions
	Resolver coordinator.ResolverOptions
}

// StartAgents runs n's drivers and resolver until the returned stop is called. The hub
// must be the one given to the node as its OnCoordinatorApplied hook. cl is the cluster
// view (a router) the agents act through.
func StartAgents(n *node.Node, hub *coordinator.Hub, cl coordinator.Cluster, coordOf func(string) uint64, opts AgentOptions) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, g := range n.CoordinatorGroups() {
		d := coordinator.NewDriver(g, func() bool { return n.Leads(g) }, cl, opts.Driver)
		hub.Register(g, d)
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.Run(ctx)
		}()
	}
	led := func() []uint64 {
		var out []uint64
		for _, s := range n.ShardIDs() {
			if n.Leads(s) {
				out = append(out, s)
			}
		}
		return out
	}
	res := coordinator.NewResolver(led, coordOf, cl, opts.Resolver)
	wg.Add(1)
	go func() {
		defer wg.Done()
		res.Run(ctx)
	}()
	return func() {
		cancel()
		for _, g := range n.CoordinatorGroups() {
			hub.Register(g, nil)
		}
		wg.Wait()
	}
}

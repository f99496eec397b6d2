// Command ledger-bench drives load through the public Connect API and reports
// transfers/s and latency. This is the quick closed-loop driver; the full benchmark
// (baselines, open loop, skew, charts) builds on it.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/shardledger/shardledger/ledger"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
	"github.com/shardledger/shardledger/proto/gen/ledger/v1/ledgerv1connect"
)

func main() {
	addr := flag.String("addr", "http://localhost:8080", "API address")
	accounts := flag.Int("accounts", 10_000, "accounts to create")
	concurrency := flag.Int("concurrency", 64, "concurrent requests")
	batch := flag.Int("batch", 1, "transfers per request")
	duration := flag.Duration("duration", 10*time.Second, "measured duration")
	warmup := flag.Duration("warmup", 2*time.Second, "warm-up before measuring")
	cross := flag.Float64("cross", 0, "fraction of transfers whose accounts live on different shards (0-1)")
	flag.Parse()
	if *cross < 0 || *cross > 1 {
		fmt.Fprintln(os.Stderr, "ledger-bench: --cross must be within 0-1")
		os.Exit(2)
	}
	if err := run(*addr, *accounts, *concurrency, *batch, *duration, *warmup, *cross); err != nil {
		fmt.Fprintln(os.Stderr, "ledger-bench:", err)
		os.Exit(1)
	}
}

func run(addr string, nAccounts, concurrency, batch int, duration, warmup time.Duration, cross float64) error {
	ctx := context.Background()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: concurrency * 2}}
	c := ledgerv1connect.NewLedgerServiceClient(hc, addr)
	admin := ledgerv1connect.NewAdminServiceClient(hc, addr)
	sm, err := admin.GetShardMap(ctx, connect.NewRequest(&ledgerv1.GetShardMapRequest{}))
	if err != nil {
		return fmt.Errorf("shard map: %w", err)
	}
	slotShard := make([]uint64, sm.Msg.SlotCount)
	for _, r := range sm.Msg.Ranges {
		for s := r.Start; s < r.End; s++ {
			slotShard[s] = r.ShardId
		}
	}
	run := time.Now().UnixNano()
	byShard := map[uint64][]string{}
	var all []*ledgerv1.Account
	for i := 0; i < nAccounts; i++ {
		id := fmt.Sprintf("b%d-%d", run, i)
		all = append(all, &ledgerv1.Account{Id: id, Currency: "USD"})
		sh := slotShard[ledger.SlotOf(id, sm.Msg.SlotCount)]
		byShard[sh] = append(byShard[sh], id)
	}
	for i := 0; i < len(all); i += 5000 {
		j := min(i+5000, len(all))
		if _, err := c.CreateAccounts(ctx, connect.NewRequest(&ledgerv1.CreateAccountsRequest{Accounts: all[i:j]})); err != nil {
			return fmt.Errorf("create accounts: %w", err)
		}
	}
	var shards [][]string
	for _, ids := range byShard {
		if len(ids) >= 2 {
			shards = append(shards, ids)
		}
	}
	var (
		seq       atomic.Int64
		done      atomic.Int64
		errs      atomic.Int64
		measuring atomic.Bool
		stop      atomic.Bool
		mu        sync.Mutex
		lat       []time.Duration
		wg        sync.WaitGroup
	)
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(run)))
			var local []time.Duration
			for !stop.Load() {
				req := &ledgerv1.CreateTransfersRequest{}
				for k := 0; k < batch; k++ {
					si := rng.IntN(len(shards))
					ids := shards[si]
					d := ids[rng.IntN(len(ids))]
					var c string
					if len(shards) > 1 && rng.Float64() < cross {
						sj := (si + 1 + rng.IntN(len(shards)-1)) % len(shards)
						c = shards[sj][rng.IntN(len(shards[sj]))]
					} else {
						for c = d; c == d; {
							c = ids[rng.IntN(len(ids))]
						}
					}
					req.Transfers = append(req.Transfers, &ledgerv1.Transfer{Id: fmt.Sprintf("t%d-%d", run, seq.Add(1)),
						DebitAccountId: d, CreditAccountId: c, Amount: 1, Currency: "USD"})
				}
				t0 := time.Now()
				_, err := c.CreateTransfers(ctx, connect.NewRequest(req))
				if !measuring.Load() {
					continue
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				local = append(local, time.Since(t0))
				done.Add(int64(batch))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	time.Sleep(warmup)
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(duration)
	measuring.Store(false)
	elapsed := time.Since(t0)
	stop.Store(true)
	wg.Wait()
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	fmt.Printf("transfers (%.0f%% cross-shard): %d in %.1fs = %.0f transfers/s (concurrency %d, %d per request, %d accounts, %d errors)\n",
		cross*100, done.Load(), elapsed.Seconds(), float64(done.Load())/elapsed.Seconds(), concurrency, batch, nAccounts, errs.Load())
	fmt.Printf("request latency: p50 %v p90 %v p99 %v max %v\n", q(0.5), q(0.9), q(0.99), q(1))
	return nil
}

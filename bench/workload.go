// Package bench is Shardledger's benchmark: workloads (account count, cross-shard
// ratio, skew, batching, closed or open loop), a runner that measures throughput and
// latency honestly (HdrHistogram; open-loop latency counts from the intended start),
// targets (the ledger over its public Connect API, PostgreSQL, the raw consensus engine)
// and reports (JSON, markdown, SVG).
package bench

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Limits of a workload.
const (
	AccountsMax    = 10_000_000
	BatchMax       = 8000
	ConcurrencyMax = 4096
	RateMax        = 10_000_000
)

// Workload is the shape of the load: the same shape is replayed on every target.
type Workload struct {
	Accounts int `json:"accounts"`
	// CrossRatio is the fraction of transfers whose accounts live on different shards.
	CrossRatio float64 `json:"cross_ratio"`
	// Zipf is the skew exponent (> 1: Zipf with that exponent over account ranks; 0:
	// uniform).
	Zipf float64 `json:"zipf"`
	// Batch is transfers per request.
	Batch int `json:"batch"`
	// Concurrency is the closed-loop client count, or the open loop's outstanding cap.
	Concurrency int `json:"concurrency"`
	// Rate, when > 0, runs an open loop at this many requests per second.
	Rate     float64       `json:"rate,omitempty"`
	Duration time.Duration `json:"duration_ns"`
	Warmup   time.Duration `json:"warmup_ns"`
	Seed     uint64        `json:"seed"`
}

// Validate checks the knobs.
func (w Workload) Validate() error {
	switch {
	case w.Accounts < 2 || w.Accounts > AccountsMax:
		return fmt.Errorf("accounts must be 2-%d, got %d", AccountsMax, w.Accounts)
	case math.IsNaN(w.CrossRatio) || math.IsNaN(w.Zipf) || math.IsNaN(w.Rate) || math.IsInf(w.Zipf, 0) || math.IsInf(w.Rate, 0):
		return fmt.Errorf("knobs must be finite numbers")
	case w.CrossRatio < 0 || w.CrossRatio > 1:
		return fmt.Errorf("cross ratio must be 0-1, got %v", w.CrossRatio)
	case w.Zipf != 0 && w.Zipf <= 1:
		return fmt.Errorf("zipf exponent must be > 1 (or 0 for uniform), got %v", w.Zipf)
	case w.Batch < 1 || w.Batch > BatchMax:
		return fmt.Errorf("batch must be 1-%d, got %d", BatchMax, w.Batch)
	case w.Concurrency < 1 || w.Concurrency > ConcurrencyMax:
		return fmt.Errorf("concurrency must be 1-%d, got %d", ConcurrencyMax, w.Concurrency)
	case w.Rate < 0 || w.Rate > RateMax:
		return fmt.Errorf("rate must be 0-%v requests/s, got %v", RateMax, w.Rate)
	case w.Duration <= 0:
		return fmt.Errorf("duration must be positive")
	}
	return nil
}

// Population is the benchmark's accounts and the shard each lives on.
type Population struct {
	IDs     []string
	Shard   []uint64 // per account
	byShard map[uint64][]int32
	// rank maps a Zipf rank to an account: hot accounts are spread over shards.
	rank []int32
}

// NewPopulation names n accounts prefix-0..n-1 and places them with shardOf.
func NewPopulation(n int, prefix string, shardOf func(id string) uint64, seed uint64) *Population {
	p := &Population{IDs: make([]string, n), Shard: make([]uint64, n), byShard: map[uint64][]int32{}}
	for i := range p.IDs {
		id := fmt.Sprintf("%s-%d", prefix, i)
		s := shardOf(id)
		p.IDs[i], p.Shard[i] = id, s
		p.byShard[s] = append(p.byShard[s], int32(i))
	}
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	p.rank = make([]int32, n)
	for i := range p.rank {
		p.rank[i] = int32(i)
	}
	rng.Shuffle(n, func(i, j int) { p.rank[i], p.rank[j] = p.rank[j], p.rank[i] })
	return p
}

// Shards is the number of shards the population spans.
func (p *Population) Shards() int { return len(p.byShard) }

// Picker draws transfer pairs for one worker (not safe for concurrent use).
type Picker struct {
	p     *Population
	w     Workload
	rng   *rand.Rand
	zipf  *rand.Zipf
	Cross int64 // pairs drawn across shards
	Pairs int64
}

// NewPicker returns a picker seeded for one worker.
func NewPicker(p *Population, w Workload, worker uint64) *Picker {
	rng := rand.New(rand.NewPCG(w.Seed, worker+1))
	pk := &Picker{p: p, w: w, rng: rng}
	if w.Zipf > 1 {
		pk.zipf = rand.NewZipf(rng, w.Zipf, 1, uint64(len(p.IDs)-1))
	}
	return pk
}

func (k *Picker) draw() int32 {
	if k.zipf != nil {
		return k.p.rank[k.zipf.Uint64()]
	}
	return int32(k.rng.IntN(len(k.p.IDs)))
}

// drawWhere draws an account satisfying ok, following the skew: rejection sampling
// from the global distribution (bounded), then uniform over set (nil: every account).
// The caller guarantees some account in set satisfies ok.
func (k *Picker) drawWhere(set []int32, ok func(int32) bool) int32 {
	if k.zipf != nil {
		for range 64 {
			if a := k.draw(); ok(a) {
				return a
			}
		}
	}
	for {
		var a int32
		if set == nil {
			a = int32(k.rng.IntN(len(k.p.IDs)))
		} else {
			a = set[k.rng.IntN(len(set))]
		}
		if ok(a) {
			return a
		}
	}
}

// Pair draws a (debit, credit) pair: across shards with probability CrossRatio.
func (k *Picker) Pair() (debit, credit int32) {
	k.Pairs++
	debit = k.draw()
	s := k.p.Shard[debit]
	same := k.p.byShard[s]
	multi := len(k.p.byShard) > 1
	if multi && (len(same) < 2 || k.rng.Float64() < k.w.CrossRatio) {
		// Across shards (also when the debit's shard has no other account).
		k.Cross++
		return debit, k.drawWhere(nil, func(a int32) bool { return k.p.Shard[a] != s })
	}
	return debit, k.drawWhere(same, func(a int32) bool { return a != debit && k.p.Shard[a] == s })
}

// ZipfMass returns the expected share of draws hitting the top fraction of ranks
// (for tests and reports).
func ZipfMass(s float64, n int, top float64) float64 {
	var total, head float64
	k := int(math.Ceil(top * float64(n)))
	for i := 1; i <= n; i++ {
		v := math.Pow(float64(i), -s)
		total += v
		if i <= k {
			head += v
		}
	}
	return head / total
}

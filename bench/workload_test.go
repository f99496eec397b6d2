package bench

import (
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func goodWorkload() Workload {
	return Workload{Accounts: 1000, CrossRatio: 0.3, Zipf: 0, Batch: 10, Concurrency: 8, Duration: time.Second, Seed: 1}
}

func TestWorkloadValidate(t *testing.T) {
	if err := goodWorkload().Validate(); err != nil {
		t.Fatalf("good workload rejected: %v", err)
	}
	good := []func(*Workload){
		func(w *Workload) { w.Accounts = 2 },
		func(w *Workload) { w.Accounts = AccountsMax },
		func(w *Workload) { w.CrossRatio = 0 },
		func(w *Workload) { w.CrossRatio = 1 },
		func(w *Workload) { w.Zipf = 1.01 },
		func(w *Workload) { w.Batch, w.Concurrency = BatchMax, ConcurrencyMax },
		func(w *Workload) { w.Rate = 1000 },
		func(w *Workload) { w.Warmup = 0 },
	}
	for i, mod := range good {
		w := goodWorkload()
		mod(&w)
		if err := w.Validate(); err != nil {
			t.Errorf("good #%d %+v rejected: %v", i, w, err)
		}
	}
	for _, tc := range []struct {
		name, want string
		mod        func(*Workload)
	}{
		{"no accounts", "accounts", func(w *Workload) { w.Accounts = 0 }},
		{"one account", "accounts", func(w *Workload) { w.Accounts = 1 }},
		{"too many accounts", "accounts", func(w *Workload) { w.Accounts = AccountsMax + 1 }},
		{"negative cross", "cross", func(w *Workload) { w.CrossRatio = -0.1 }},
		{"cross > 1", "cross", func(w *Workload) { w.CrossRatio = 1.1 }},
		{"zipf 1", "zipf", func(w *Workload) { w.Zipf = 1 }},
		{"zipf 0.5", "zipf", func(w *Workload) { w.Zipf = 0.5 }},
		{"negative zipf", "zipf", func(w *Workload) { w.Zipf = -2 }},
		{"zero batch", "batch", func(w *Workload) { w.Batch = 0 }},
		{"batch too big", "batch", func(w *Workload) { w.Batch = BatchMax + 1 }},
		{"zero concurrency", "concurrency", func(w *Workload) { w.Concurrency = 0 }},
		{"concurrency too big", "concurrency", func(w *Workload) { w.Concurrency = ConcurrencyMax + 1 }},
		{"negative rate", "rate", func(w *Workload) { w.Rate = -1 }},
		{"zero duration", "duration", func(w *Workload) { w.Duration = 0 }},
		{"negative duration", "duration", func(w *Workload) { w.Duration = -time.Second }},
	} {
		w := goodWorkload()
		tc.mod(&w)
		err := w.Validate()
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not mention %q", tc.name, err, tc.want)
		}
	}
	t.Run("non-finite knobs", func(t *testing.T) {
		var accepted []string
		for name, mod := range map[string]func(*Workload){
			"cross NaN": func(w *Workload) { w.CrossRatio = math.NaN() },
			"zipf NaN":  func(w *Workload) { w.Zipf = math.NaN() },
			"zipf +Inf": func(w *Workload) { w.Zipf = math.Inf(1) },
			"rate NaN":  func(w *Workload) { w.Rate = math.NaN() },
			"rate +Inf": func(w *Workload) { w.Rate = math.Inf(1) },
		} {
			w := goodWorkload()
			mod(&w)
			if w.Validate() == nil {
				accepted = append(accepted, name)
			}
		}
		if len(accepted) > 0 {
			slices.Sort(accepted)
			t.Errorf("Validate accepts %v (NaN fails every comparison; Rate +Inf makes the open-loop interval 0)", accepted)
		}
	})
}

// hashShards places accounts on n shards by hashing their IDs.
func hashShards(n uint64) func(string) uint64 {
	return func(id string) uint64 {
		h := fnv.New64a()
		h.Write([]byte(id))
		return h.Sum64() % n
	}
}

func TestPopulationPlacement(t *testing.T) {
	const n = 5000
	shardOf := hashShards(4)
	p := NewPopulation(n, "acct", shardOf, 7)
	if len(p.IDs) != n || len(p.Shard) != n || len(p.rank) != n {
		t.Fatalf("sizes: %d ids, %d shards, %d ranks", len(p.IDs), len(p.Shard), len(p.rank))
	}
	if p.Shards() != 4 {
		t.Fatalf("Shards() = %d, want 4", p.Shards())
	}
	seenID := map[string]bool{}
	for i, id := range p.IDs {
		if seenID[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seenID[id] = true
		if !strings.HasPrefix(id, "acct-") {
			t.Fatalf("id %q lacks the prefix", id)
		}
		if p.Shard[i] != shardOf(id) {
			t.Fatalf("account %d (%s) on shard %d, shardOf says %d", i, id, p.Shard[i], shardOf(id))
		}
	}
	// byShard partitions the accounts: each exactly once, on its shard.
	seen := make([]int, n)
	for s, ids := range p.byShard {
		if len(ids) < n/8 {
			t.Errorf("shard %d has only %d accounts", s, len(ids))
		}
		for _, a := range ids {
			if p.Shard[a] != s {
				t.Errorf("account %d listed on shard %d, lives on %d", a, s, p.Shard[a])
			}
			seen[a]++
		}
	}
	for a, c := range seen {
		if c != 1 {
			t.Fatalf("account %d listed %d times in byShard", a, c)
		}
	}
	// rank is a permutation.
	r := slices.Clone(p.rank)
	slices.Sort(r)
	for i, a := range r {
		if int(a) != i {
			t.Fatalf("rank is not a permutation (sorted[%d] = %d)", i, a)
		}
	}
	// Hot accounts are spread over shards: the top 100 ranks touch every shard.
	hot := map[uint64]bool{}
	for _, a := range p.rank[:100] {
		hot[p.Shard[a]] = true
	}
	if len(hot) != 4 {
		t.Errorf("hottest 100 accounts on %d shards, want 4", len(hot))
	}
}

// checkPair reports whether (d, c) is a valid pair, failing t (with Errorf, so it may
// run on another goroutine) if not.
func checkPair(t *testing.T, p *Population, d, c int32) bool {
	t.Helper()
	if d < 0 || int(d) >= len(p.IDs) || c < 0 || int(c) >= len(p.IDs) {
		t.Errorf("pair (%d, %d) out of range", d, c)
		return false
	}
	if d == c {
		t.Errorf("debit == credit == %d", d)
		return false
	}
	return true
}

func TestPickerCrossRatio(t *testing.T) {
	const draws = 100_000
	p := NewPopulation(10_000, "acct", hashShards(4), 1)
	for _, zipf := range []float64{0, 1.2} {
		for _, r := range []float64{0, 0.3, 1} {
			w := goodWorkload()
			w.Accounts, w.CrossRatio, w.Zipf = len(p.IDs), r, zipf
			k := NewPicker(p, w, 0)
			var cross int
			for range draws {
				d, c := k.Pair()
				if !checkPair(t, p, d, c) {
					return
				}
				if p.Shard[d] != p.Shard[c] {
					cross++
				}
			}
			if k.Pairs != draws {
				t.Errorf("zipf %v r %v: Pairs = %d", zipf, r, k.Pairs)
			}
			if int64(cross) != k.Cross {
				t.Errorf("zipf %v r %v: %d pairs really crossed shards, picker counted %d", zipf, r, cross, k.Cross)
			}
			got := float64(cross) / draws
			switch {
			case r == 0 && cross != 0, r == 1 && cross != draws:
				t.Errorf("zipf %v r %v: cross fraction %v, want exactly %v", zipf, r, got, r)
			case math.Abs(got-r) > 0.01:
				t.Errorf("zipf %v r %v: cross fraction %v, want within 0.01", zipf, r, got)
			}
		}
	}
}

// TestPickerSingletonShard: an account alone on its shard cannot pair on it.
func TestPickerSingletonShard(t *testing.T) {
	shardOf := func(id string) uint64 {
		if id == "acct-0" {
			return 9
		}
		return 1
	}
	p := NewPopulation(50, "acct", shardOf, 1)
	w := goodWorkload()
	w.Accounts, w.CrossRatio = 50, 0
	done := make(chan struct{})
	var k *Picker
	var cross int64
	go func() {
		defer close(done)
		k = NewPicker(p, w, 0)
		for range 20_000 {
			d, c := k.Pair()
			if !checkPair(t, p, d, c) {
				return
			}
			if p.Shard[d] != p.Shard[c] {
				cross++
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Pair does not return with a one-account shard")
	}
	if cross == 0 {
		t.Fatal("the lone account was never drawn")
	}
	t.Run("cross counted", func(t *testing.T) {
		if k.Cross != cross {
			t.Errorf("Pair's one-account-shard branch returns a cross-shard pair without k.Cross++ (%d crossed, %d counted): Result.CrossMeasured under-reports", cross, k.Cross)
		}
	})
}

func TestPickerOneShard(t *testing.T) {
	for _, n := range []int{2, 3, 1000} {
		for _, zipf := range []float64{0, 1.5} {
			p := NewPopulation(n, "acct", func(string) uint64 { return 0 }, 3)
			if p.Shards() != 1 {
				t.Fatalf("Shards() = %d", p.Shards())
			}
			w := goodWorkload()
			w.Accounts, w.CrossRatio, w.Zipf = n, 1, zipf
			done := make(chan struct{})
			var k *Picker
			go func() {
				defer close(done)
				k = NewPicker(p, w, 0)
				for range 20_000 {
					if d, c := k.Pair(); !checkPair(t, p, d, c) {
						return
					}
				}
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatalf("n %d zipf %v: Pair loops with one shard and CrossRatio 1", n, zipf)
			}
			if k.Cross != 0 {
				t.Errorf("n %d zipf %v: one shard, yet %d pairs counted as cross", n, zipf, k.Cross)
			}
		}
	}
}

// debitShare draws pairs and returns the share of debits on the hottest top fraction
// of ranks, and the share of the most-debited top fraction of accounts.
func debitShare(p *Population, w Workload, draws int, top float64) (hotRanks, hotAccounts float64) {
	k := int(math.Ceil(top * float64(len(p.IDs))))
	hot := make([]bool, len(p.IDs))
	for _, a := range p.rank[:k] {
		hot[a] = true
	}
	counts := make([]int, len(p.IDs))
	pk := NewPicker(p, w, 0)
	var onHot int
	for range draws {
		d, _ := pk.Pair()
		counts[d]++
		if hot[d] {
			onHot++
		}
	}
	slices.SortFunc(counts, func(a, b int) int { return b - a })
	var topCount int
	for _, c := range counts[:k] {
		topCount += c
	}
	return float64(onHot) / float64(draws), float64(topCount) / float64(draws)
}

func TestPickerUniformSkew(t *testing.T) {
	const n, draws = 10_000, 100_000
	p := NewPopulation(n, "acct", hashShards(4), 11)
	w := goodWorkload()
	w.Accounts = n
	hotRanks, hotAccounts := debitShare(p, w, draws, 0.01)
	// 1,000 expected hits on 100 accounts: sd ≈ 31 (0.0003).
	if math.Abs(hotRanks-0.01) > 0.002 {
		t.Errorf("uniform: top 1%% of ranks got %.4f of debits, want ≈ 0.01", hotRanks)
	}
	// The most-hit 1% of accounts is inflated by noise only (mean 10 hits each).
	if hotAccounts > 0.025 {
		t.Errorf("uniform: most-debited 1%% of accounts got %.4f of debits", hotAccounts)
	}
}

func TestPickerZipfSkew(t *testing.T) {
	const n, draws = 10_000, 100_000
	p := NewPopulation(n, "acct", hashShards(4), 11)
	w := goodWorkload()
	w.Accounts, w.Zipf, w.CrossRatio = n, 1.2, 0.3
	want := ZipfMass(1.2, n, 0.01)
	hotRanks, hotAccounts := debitShare(p, w, draws, 0.01)
	if math.Abs(hotRanks-want) > 0.02 {
		t.Errorf("zipf 1.2: hottest 1%% of ranks got %.4f of debits, ZipfMass says %.4f", hotRanks, want)
	}
	if hotRanks < 20*0.01 {
		t.Errorf("zipf 1.2: hottest 1%% got %.4f, not far above uniform", hotRanks)
	}
	if hotAccounts < hotRanks-0.01 {
		t.Errorf("zipf 1.2: most-debited 1%% of accounts got %.4f < hottest ranks %.4f", hotAccounts, hotRanks)
	}
	// The hottest rank is the most debited account.
	counts := make([]int, n)
	k := NewPicker(p, w, 1)
	for range draws {
		d, _ := k.Pair()
		counts[d]++
	}
	if hottest := p.rank[0]; counts[hottest] != slices.Max(counts) {
		t.Errorf("rank 0 (account %d) got %d debits, max is %d", hottest, counts[hottest], slices.Max(counts))
	}
}

func TestZipfMass(t *testing.T) {
	if got := ZipfMass(1.2, 10_000, 1); math.Abs(got-1) > 1e-12 {
		t.Errorf("whole mass = %v", got)
	}
	a, b := ZipfMass(1.2, 10_000, 0.01), ZipfMass(2, 10_000, 0.01)
	if !(a > 0.01 && b > a && b < 1) {
		t.Errorf("ZipfMass(1.2) = %v, ZipfMass(2) = %v", a, b)
	}
}

func pairSeq(p *Population, w Workload, worker uint64, n int) [][2]int32 {
	k := NewPicker(p, w, worker)
	out := make([][2]int32, n)
	for i := range out {
		out[i][0], out[i][1] = k.Pair()
	}
	return out
}

func TestPickerDeterminism(t *testing.T) {
	const n = 5000
	for _, zipf := range []float64{0, 1.2} {
		p := NewPopulation(n, "acct", hashShards(4), 5)
		w := goodWorkload()
		w.Accounts, w.Zipf, w.CrossRatio, w.Seed = n, zipf, 0.5, 42
		a := pairSeq(p, w, 3, 10_000)
		if b := pairSeq(p, w, 3, 10_000); !slices.Equal(a, b) {
			t.Errorf("zipf %v: same seed and worker, different sequences", zipf)
		}
		if b := pairSeq(p, w, 4, 10_000); slices.Equal(a, b) {
			t.Errorf("zipf %v: workers 3 and 4 draw the same sequence", zipf)
		}
		w2 := w
		w2.Seed++
		if b := pairSeq(p, w2, 3, 10_000); slices.Equal(a, b) {
			t.Errorf("zipf %v: seeds 42 and 43 draw the same sequence", zipf)
		}
		// The same population built again (as another process, or the run against the
		// next target, would) must replay the same pairs.
		p2 := NewPopulation(n, "acct", hashShards(4), 5)
		if !slices.Equal(p.rank, p2.rank) {
			t.Errorf("zipf %v: same population seed, different ranks", zipf)
		}
		t.Run(fmt.Sprintf("rebuilt population zipf %v", zipf), func(t *testing.T) {
			if b := pairSeq(p2, w, 3, 10_000); !slices.Equal(a, b) {
				t.Errorf("a population rebuilt with the same arguments draws a different sequence: NewPopulation fills others[s] by ranging over the byShard map, so its order (and every uniform cross-shard credit) depends on map iteration order")
			}
		})
	}
}

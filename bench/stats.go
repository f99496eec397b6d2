package bench

import (
	"cmp"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Recorder collects one run's measurements (safe for concurrent use).
type Recorder struct {
	mu        sync.Mutex
	hist      *hdrhistogram.Histogram // request latency, microseconds
	transfers int64
	requests  int64
	retries   int64
	errors    map[string]int64
}

// NewRecorder returns an empty recorder (1 µs to 5 min, 3 significant digits).
func NewRecorder() *Recorder {
	return &Recorder{hist: hdrhistogram.New(1, int64(5*time.Minute/time.Microsecond), 3), errors: map[string]int64{}}
}

// Done records a completed request of n transfers taking d.
func (r *Recorder) Done(n int, d time.Duration) {
	us := max(d.Microseconds(), 1)
	r.mu.Lock()
	_ = r.hist.RecordValue(min(us, r.hist.HighestTrackableValue()))
	r.transfers += int64(n)
	r.requests++
	r.mu.Unlock()
}

// Error counts an error by kind (a Connect code, a transfer status, ...).
func (r *Recorder) Error(kind string, n int64) {
	r.mu.Lock()
	r.errors[kind] += n
	r.mu.Unlock()
}

// Retry counts a resent request.
func (r *Recorder) Retry() {
	r.mu.Lock()
	r.retries++
	r.mu.Unlock()
}

// Snapshot returns the transfers and requests done so far.
func (r *Recorder) Snapshot() (transfers, requests int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.transfers, r.requests
}

// Latency is a latency summary in milliseconds.
type Latency struct {
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Max  float64 `json:"max_ms"`
}

// Result is one measured run.
type Result struct {
	Name            string           `json:"name"`
	Target          string           `json:"target"`
	Workload        Workload         `json:"workload"`
	Seconds         float64          `json:"seconds"`
	Transfers       int64            `json:"transfers"`
	Requests        int64            `json:"requests"`
	TransfersPerSec float64          `json:"transfers_per_sec"`
	Latency         Latency          `json:"latency"`
	Errors          map[string]int64 `json:"errors,omitempty"`
	Retries         int64            `json:"retries"`
	// CPUSecondsPer1k is the target's CPU seconds per 1,000 transfers (0: unknown).
	CPUSecondsPer1k float64 `json:"cpu_seconds_per_1k"`
	// StealPct is the share of the machine's CPU time the hypervisor gave to others
	// during the measured window, in percent (Linux; nil: unknown). On shared VMs it is
	// what makes two runs of the same workload differ.
	StealPct *float64 `json:"steal_pct,omitempty"`
	// CrossMeasured is the fraction of drawn pairs that crossed shards.
	CrossMeasured float64 `json:"cross_measured"`
	// Runs are the transfers/s of every run of a repeated workload, in run order; the
	// result is the run with the median throughput (MedianResult). Empty for one run.
	Runs []float64 `json:"runs,omitempty"`
	Note string    `json:"note,omitempty"`
}

// MedianResult returns the run with the median transfers/s (the lower middle one of an
// even count) with Runs listing every run's transfers/s in order; nil for no runs. A
// whole run is returned, not per-field medians, so its latencies and counts belong to
// the throughput shown.
func MedianResult(runs []*Result) *Result {
	var rs []*Result
	for _, r := range runs {
		if r != nil {
			rs = append(rs, r)
		}
	}
	if len(rs) == 0 {
		return nil
	}
	if len(rs) == 1 {
		return rs[0]
	}
	tps := make([]float64, len(rs))
	for i, r := range rs {
		tps[i] = r.TransfersPerSec
	}
	sorted := slices.Clone(rs)
	slices.SortStableFunc(sorted, func(a, b *Result) int { return cmp.Compare(a.TransfersPerSec, b.TransfersPerSec) })
	med := *sorted[(len(sorted)-1)/2]
	med.Runs = tps
	return &med
}

// Result summarizes the recorder over a measured window.
func (r *Recorder) Result(name, target string, w Workload, elapsed time.Duration) *Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	ms := func(q float64) float64 { return float64(r.hist.ValueAtQuantile(q)) / 1000 }
	res := &Result{Name: name, Target: target, Workload: w, Seconds: elapsed.Seconds(),
		Transfers: r.transfers, Requests: r.requests, Retries: r.retries,
		Latency: Latency{P50: ms(50), P90: ms(90), P99: ms(99), P999: ms(99.9), Max: float64(r.hist.Max()) / 1000}}
	if elapsed > 0 {
		res.TransfersPerSec = float64(r.transfers) / elapsed.Seconds()
	}
	if len(r.errors) > 0 {
		res.Errors = map[string]int64{}
		keys := make([]string, 0, len(r.errors))
		for k := range r.errors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			res.Errors[k] = r.errors[k]
		}
	}
	return res
}

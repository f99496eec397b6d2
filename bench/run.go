package bench

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Transfer is one generated transfer (indexes into the population).
type Transfer struct {
	ID            string
	Debit, Credit int32
	Amount        uint64
}

// Target runs requests of transfers: the ledger over its API, PostgreSQL, the engine.
type Target interface {
	Name() string
	// Setup creates the population's accounts (each with enough funds to never run out).
	Setup(ctx context.Context, p *Population) error
	// Do runs one request. Per-item failures and resends go to rec (rec.Error,
	// rec.Retry); an error means the request failed as a whole.
	Do(ctx context.Context, batch []Transfer, rec *Recorder) error
	// CPUSeconds is the target's CPU time so far (0 when unknown).
	CPUSeconds() float64
	Close() error
}

// ErrorKind names an error for the counts (targets may implement KindOf).
type ErrorKind interface{ KindOf(error) string }

// Run drives w against t and measures the window after the warm-up.
func Run(ctx context.Context, name string, w Workload, p *Population, t Target, progress io.Writer) (*Result, error) {
	if err := w.Validate(); err != nil {
		return nil, err
	}
	var (
		rec      atomic.Pointer[Recorder]
		stop     atomic.Bool
		wg       sync.WaitGroup
		pickers  = make([]*Picker, w.Concurrency)
		runID    = fmt.Sprintf("%s-%x", name, time.Now().UnixNano())
		intended chan time.Time
	)
	rec.Store(NewRecorder()) // warm-up recorder, discarded
	kind := func(err error) string {
		if k, ok := t.(ErrorKind); ok {
			return k.KindOf(err)
		}
		return "error"
	}
	if w.Rate > 0 {
		intended = make(chan time.Time, w.Concurrency)
	}
	for i := range pickers {
		pickers[i] = NewPicker(p, w, uint64(i))
	}
	for worker := 0; worker < w.Concurrency; worker++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pk := pickers[worker]
			batch := make([]Transfer, w.Batch)
			for seq := 0; !stop.Load(); {
				start := time.Now()
				if intended != nil {
					var ok bool
					if start, ok = <-intended; !ok {
						return
					}
				}
				for i := range batch {
					d, c := pk.Pair()
					batch[i] = Transfer{ID: fmt.Sprintf("%s-%d-%d", runID, worker, seq), Debit: d, Credit: c, Amount: 1}
					seq++
				}
				r := rec.Load()
				if err := t.Do(ctx, batch, r); err != nil {
					r.Error(kind(err), 1)
					if ctx.Err() != nil {
						return
					}
					continue
				}
				r.Done(len(batch), time.Since(start))
			}
		}()
	}
	if intended != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(intended)
			interval := time.Duration(float64(time.Second) / w.Rate)
			next := time.Now()
			for !stop.Load() {
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				select {
				case intended <- next: // a late send still carries the intended time
				case <-ctx.Done():
					return
				}
				next = next.Add(interval)
			}
		}()
	}
	sleepCtx(ctx, w.Warmup)
	measured := NewRecorder()
	rec.Store(measured)
	cpu0, t0 := t.CPUSeconds(), time.Now()
	stat0, stat0ok := readCPUStat()
	ticker := time.NewTicker(time.Second)
	deadline := time.NewTimer(w.Duration)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-deadline.C:
			break loop
		case <-ticker.C:
			if progress != nil {
				n, _ := measured.Snapshot()
				el := time.Since(t0).Seconds()
				fmt.Fprintf(progress, "\r%-28s %5.0fs %10.0f transfers/s", name, el, float64(n)/el)
			}
		}
	}
	ticker.Stop()
	elapsed := time.Since(t0)
	cpu1 := t.CPUSeconds()
	stat1, stat1ok := readCPUStat()
	rec.Store(NewRecorder()) // requests started after the window are not counted
	stop.Store(true)
	wg.Wait()
	if progress != nil {
		fmt.Fprintln(progress)
	}
	res := measured.Result(name, t.Name(), w, elapsed)
	if cpu1 > cpu0 && res.Transfers > 0 {
		res.CPUSecondsPer1k = (cpu1 - cpu0) / float64(res.Transfers) * 1000
	}
	if stat0ok && stat1ok {
		if pct, ok := stealPct(stat0, stat1); ok {
			res.StealPct = &pct
		}
	}
	var cross, pairs int64
	for _, pk := range pickers {
		cross, pairs = cross+pk.Cross, pairs+pk.Pairs
	}
	if pairs > 0 {
		res.CrossMeasured = float64(cross) / float64(pairs)
	}
	return res, ctx.Err()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

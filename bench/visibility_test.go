package bench

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestVisibilityMarkdown(t *testing.T) {
	v := &VisibilityResult{Transfers: 3, Cross: true, Answer: Latency{P50: 5.5, P90: 7, P99: 9, Max: 9.5},
		Posted: Latency{P50: 9.4, P90: 11, P99: 15, Max: 16}}
	md := v.Markdown()
	for _, want := range []string{"3 cross-shard transfers", "| request → answer | 5.50 |", "| answer → posted on both accounts | 9.40 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// TestVisibility runs the measurement on a dev cluster: every transfer is answered and
// then seen posted on both accounts, cross-shard and intra-shard.
func TestVisibility(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds ledgerd and starts a dev cluster")
	}
	bin := buildTestLedgerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := StartLedger(ctx, LedgerOptions{Mode: "dev", Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Visibility(ctx, 0, true); err == nil {
		t.Error("0 transfers: want an error")
	}
	for _, cross := range []bool{true, false} {
		v, err := l.Visibility(ctx, 5, cross)
		if err != nil {
			t.Fatalf("cross=%v: %v", cross, err)
		}
		if v.Transfers != 5 || v.Cross != cross || v.Answer.P50 <= 0 || v.Posted.Max <= 0 || v.Posted.P50 > v.Posted.Max {
			t.Errorf("cross=%v: %+v", cross, v)
		}
	}
}

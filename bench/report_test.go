package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func reportResults() []*Result {
	mk := func(name, target string, cross float64, batch int, rate, tps, p50, p99 float64) *Result {
		return &Result{
			Name: name, Target: target,
			Workload:        Workload{Accounts: 100_000, CrossRatio: cross, Batch: batch, Concurrency: 64, Rate: rate, Duration: 30 * time.Second, Seed: 1},
			Seconds:         30,
			Transfers:       int64(tps * 30),
			Requests:        int64(tps * 30 / float64(batch)),
			TransfersPerSec: tps,
			Latency:         Latency{P50: p50, P90: p50 * 2, P99: p99, P999: p99 * 1.5, Max: p99 * 3},
			CrossMeasured:   cross,
		}
	}
	rs := []*Result{
		mk("ledger-cross0-b1", "ledger", 0, 1, 0, 4000, 1.234, 9.87),
		mk("ledger-cross30-b1", "ledger", 0.3, 1, 0, 3000, 1.5, 12),
		mk("ledger-cross0-b100", "ledger", 0, 100, 0, 120_000, 5, 20),
		mk("ledger-cross100-b100", "ledger", 1, 100, 0, 60_000, 8, 30),
		mk("ledger-cross30-b100", "ledger", 0.3, 100, 0, 90_000, 6, 25),
		mk("ledger-open-2k", "ledger", 0.1, 10, 2000, 20_000, 2, 8),
		mk("ledger-open-1k", "ledger", 0.1, 10, 1000, 10_000, 1, 4),
		mk("postgres-b100", "postgres", 0, 100, 0, 30_000, 3, 15),
	}
	rs[0].Errors = map[string]int64{"unavailable": 12, "aborted": 1200, "deadline_exceeded": 3, "insufficient_funds": 7}
	rs[0].Retries = 42
	rs[0].CPUSecondsPer1k = 0.0123
	steal := 7.5
	rs[0].StealPct = &steal
	rs[1].Note = "leader moved during the run"
	rs[0].Workload.Zipf = 1.2
	return rs
}

func newTestReport() *Report {
	r := &Report{
		Machine: "AMD EPYC 7763, 16 vCPU, 64 GiB, Linux 6.8, go1.26",
		Command: "ledger-bench -targets ledger,postgres -duration 30s -accounts 100000",
		Started: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		Results: reportResults(),
	}
	r.AddRatio("ledger vs postgres", "ledger-cross0-b100", "postgres-b100", 2) // 4× → met
	r.AddRatio("cross 100% penalty", "ledger-cross100-b100", "ledger-cross0-b100", 0.8)
	r.AddRatio("batching gain", "ledger-cross0-b100", "ledger-cross0-b1", 0)
	r.AddRatio("engine vs ledger", "engine-b100", "ledger-cross0-b100", 1.5) // missing
	r.AddNote("PostgreSQL ran with synchronous_commit=on")
	return r
}

func TestReportAddRatio(t *testing.T) {
	r := newTestReport()
	if len(r.Ratios) != 4 {
		t.Fatalf("ratios = %d, want 4", len(r.Ratios))
	}
	check := func(i int, value float64, met bool, note bool) {
		t.Helper()
		ra := r.Ratios[i]
		if d := ra.Value - value; d > 1e-9 || d < -1e-9 {
			t.Errorf("%s: value %v, want %v", ra.Name, ra.Value, value)
		}
		if ra.Met != met {
			t.Errorf("%s: met %v, want %v", ra.Name, ra.Met, met)
		}
		if (ra.Note != "") != note {
			t.Errorf("%s: note %q", ra.Name, ra.Note)
		}
	}
	check(0, 4, true, false)
	check(1, 0.5, false, false)
	check(2, 30, false, false) // no target: never "met"
	check(3, 0, false, true)
	if !strings.Contains(r.Ratios[3].Note, "engine-b100") {
		t.Errorf("missing-result note does not name it: %q", r.Ratios[3].Note)
	}

	// A denominator without throughput.
	r.Results = append(r.Results, &Result{Name: "dead", Target: "ledger"})
	r.AddRatio("over dead", "ledger-cross0-b1", "dead", 1)
	if ra := r.Ratios[len(r.Ratios)-1]; ra.Value != 0 || ra.Met || ra.Note == "" {
		t.Errorf("zero denominator: %+v", ra)
	}
	// Both missing, on an empty report.
	var empty Report
	empty.AddRatio("x", "a", "b", 2)
	if ra := empty.Ratios[0]; ra.Value != 0 || ra.Met || !strings.Contains(ra.Note, `"a"`) || !strings.Contains(ra.Note, `"b"`) {
		t.Errorf("both missing: %+v", ra)
	}
}

func TestReportMarkdown(t *testing.T) {
	r := newTestReport()
	md := r.Markdown()
	for _, res := range r.Results {
		if !strings.Contains(md, res.Name) {
			t.Errorf("markdown lacks result %q", res.Name)
		}
	}
	for _, want := range []string{
		r.Machine, r.Command,
		"| transfers/s |", "| p99.9 |",
		"120,000", // transfers/s with separators
		"1.23",    // p50 with 3 significant digits
		"1,222 (aborted 1,200, unavailable 12, insufficient_funds 7, +1 more)",
		"0.0123",  // CPU s per 1k
		"| 7.5 |", // CPU steal %
		"30% / 30%",
		"closed loop",
		"leader moved during the run",
		"PostgreSQL ran with synchronous_commit=on",
		"missing result",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	lineOf := func(name string) string {
		for l := range strings.SplitSeq(md, "\n") {
			if strings.HasPrefix(l, "| "+name+" (") {
				return l
			}
		}
		t.Fatalf("no ratio line for %q in\n%s", name, md)
		return ""
	}
	if l := lineOf("ledger vs postgres"); !strings.Contains(l, "✓") || !strings.Contains(l, "4×") || !strings.Contains(l, "≥ 2×") {
		t.Errorf("met ratio line: %q", l)
	}
	if l := lineOf("cross 100% penalty"); !strings.Contains(l, "✗") || !strings.Contains(l, "0.5×") {
		t.Errorf("unmet ratio line: %q", l)
	}
	if l := lineOf("batching gain"); strings.ContainsAny(l, "✓✗") || !strings.Contains(l, "30×") {
		t.Errorf("informative ratio line: %q", l)
	}
	if l := lineOf("engine vs ledger"); !strings.Contains(l, "✗") {
		t.Errorf("missing ratio line: %q", l)
	}
	// Every table row has the header's column count.
	var header int
	for l := range strings.SplitSeq(md, "\n") {
		if strings.HasPrefix(l, "| name | target |") {
			header = strings.Count(l, "|")
			continue
		}
		if header > 0 {
			if !strings.HasPrefix(l, "|") {
				break
			}
			if n := strings.Count(strings.ReplaceAll(l, `\|`, ""), "|"); n != header {
				t.Errorf("row has %d separators, header %d: %q", n, header, l)
			}
		}
	}
	if header != 19 {
		t.Errorf("results header has %d separators, want 19 (18 columns)", header)
	}
}

// TestMedianResult: the run with the median throughput, whole, with every run listed in
// run order; one run is returned as is; nil runs are skipped.
func TestMedianResult(t *testing.T) {
	mk := func(tps, p99 float64) *Result {
		return &Result{Name: "x", TransfersPerSec: tps, Latency: Latency{P99: p99}}
	}
	if MedianResult(nil) != nil || MedianResult([]*Result{nil}) != nil {
		t.Error("no runs must give nil")
	}
	one := mk(5, 1)
	if got := MedianResult([]*Result{one}); got != one || got.Runs != nil {
		t.Errorf("one run: %+v", got)
	}
	cases := []struct {
		name    string
		runs    []*Result
		wantTPS float64
		wantP99 float64
		wantRun []float64
	}{
		{"three", []*Result{mk(300, 3), mk(100, 1), mk(200, 2)}, 200, 2, []float64{300, 100, 200}},
		{"four: lower middle", []*Result{mk(40, 4), mk(10, 1), mk(30, 3), mk(20, 2)}, 20, 2, []float64{40, 10, 30, 20}},
		{"equal throughputs: the first", []*Result{mk(7, 1), mk(7, 2), mk(7, 3)}, 7, 2, []float64{7, 7, 7}},
		{"nil skipped", []*Result{mk(3, 3), nil, mk(1, 1)}, 1, 1, []float64{3, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := MedianResult(tc.runs)
			if got.TransfersPerSec != tc.wantTPS || got.Latency.P99 != tc.wantP99 || !slices.Equal(got.Runs, tc.wantRun) {
				t.Errorf("got %v tps, p99 %v, runs %v", got.TransfersPerSec, got.Latency.P99, got.Runs)
			}
			for _, r := range tc.runs {
				if r != nil && r.Runs != nil {
					t.Error("an input run was changed")
				}
			}
		})
	}
	r := &Report{Results: []*Result{MedianResult([]*Result{mk(1000, 1), mk(3000, 1), mk(2000, 1)}), mk(5000, 1)}}
	md := r.Markdown()
	if !strings.Contains(md, "| 2,000 | 1,000 / 3,000 / 2,000 |") || !strings.Contains(md, "| 5,000 | — |") {
		t.Errorf("runs column:\n%s", md)
	}
}

func TestReportMarkdownEscapingAndEmpty(t *testing.T) {
	r := &Report{Command: "run `x` ```y```", Results: []*Result{nil, {Name: "a|b\nc", Target: "ledger"}}}
	md := r.Markdown()
	if !strings.Contains(md, `a\|b c`) {
		t.Errorf("pipe/newline not escaped in cell:\n%s", md)
	}
	if !strings.Contains(md, "````\nrun `x` ```y```\n````") {
		t.Errorf("command fence does not outlast backticks:\n%s", md)
	}
	if md := (&Report{}).Markdown(); !strings.Contains(md, "No results") || !strings.Contains(md, "No ratios") {
		t.Errorf("empty report:\n%s", md)
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	r := newTestReport()
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "\n  \"machine\"") {
		t.Errorf("not indented:\n%.200s", buf.String())
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"machine", "command", "started", "results", "ratios", "notes"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks key %q", k)
		}
	}
	results := m["results"].([]any)
	if len(results) != len(r.Results) {
		t.Fatalf("results = %d, want %d", len(results), len(r.Results))
	}
	first := results[0].(map[string]any)
	for _, k := range []string{"name", "target", "workload", "transfers_per_sec", "latency", "errors", "retries", "cpu_seconds_per_1k", "cross_measured"} {
		if _, ok := first[k]; !ok {
			t.Errorf("result JSON lacks key %q", k)
		}
	}
	if lat := first["latency"].(map[string]any); lat["p99_ms"] != 9.87 {
		t.Errorf("p99_ms = %v", lat["p99_ms"])
	}
	ratio := m["ratios"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "numerator", "denominator", "value", "target", "met"} {
		if _, ok := ratio[k]; !ok {
			t.Errorf("ratio JSON lacks key %q", k)
		}
	}
	// And back into a Report.
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Command != r.Command || !back.Started.Equal(r.Started) || len(back.Ratios) != len(r.Ratios) ||
		back.Results[2].TransfersPerSec != r.Results[2].TransfersPerSec || back.Results[0].Workload != r.Results[0].Workload {
		t.Errorf("round trip differs: %+v", back)
	}
}

// parseSVG decodes s to EOF and counts elements by local name.
func parseSVG(t *testing.T, s string) map[string]int {
	t.Helper()
	counts := map[string]int{}
	d := xml.NewDecoder(strings.NewReader(s))
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG does not parse: %v\n%s", err, s)
		}
		if se, ok := tok.(xml.StartElement); ok {
			counts[se.Name.Local]++
		}
	}
	if counts["svg"] != 1 {
		t.Fatalf("want one <svg>, got %d", counts["svg"])
	}
	return counts
}

func TestLineChartSVG(t *testing.T) {
	series := []Series{
		{Name: "alpha", Points: []Point{{0, 1}, {10, 5}, {20, 3}}},
		{Name: "beta", Points: []Point{{5, 100_000}, {15, 250_000}}},
		{Name: "empty one"},
		{Name: "single", Points: []Point{{7, 7}}},
	}
	svg := LineChartSVG("Title", "x axis", "y axis", series)
	c := parseSVG(t, svg)
	if c["polyline"]+c["path"] != 3 {
		t.Errorf("want 3 lines (non-empty series), got %d polylines %d paths", c["polyline"], c["path"])
	}
	for _, want := range []string{"alpha", "beta", "empty one", "single", "Title", "x axis", "y axis", "250k"} {
		if !strings.Contains(svg, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	for _, bad := range []string{"NaN", "Inf", "<script", "http://fonts", "@import", "href"} {
		if strings.Contains(svg, bad) {
			t.Errorf("SVG contains %q", bad)
		}
	}
	// Distinct colours.
	colours := map[string]bool{}
	for l := range strings.SplitSeq(svg, "\n") {
		if strings.HasPrefix(l, "<polyline") {
			i := strings.Index(l, `stroke="`)
			colours[l[i:i+16]] = true
		}
	}
	if len(colours) != 3 {
		t.Errorf("want 3 distinct line colours, got %v", colours)
	}
}

func TestLineChartSVGEscaping(t *testing.T) {
	name := `p<99> & "co"`
	svg := LineChartSVG(`a<b & c>d`, `x<`, `y&`, []Series{{Name: name, Points: []Point{{1, 2}, {2, 3}}}})
	parseSVG(t, svg)
	if strings.Contains(svg, "a<b") || strings.Contains(svg, "p<99>") || strings.Contains(svg, "& c") {
		t.Errorf("text not escaped:\n%s", svg)
	}
	if !strings.Contains(svg, "p&lt;99&gt; &amp; ") || !strings.Contains(svg, "a&lt;b &amp; c&gt;d") {
		t.Errorf("escaped text missing:\n%s", svg)
	}
	// The decoded text carries the original name.
	d := xml.NewDecoder(strings.NewReader(svg))
	found := false
	for {
		tok, err := d.Token()
		if err != nil {
			break
		}
		if cd, ok := tok.(xml.CharData); ok && strings.Contains(string(cd), name) {
			found = true
		}
	}
	if !found {
		t.Errorf("decoded SVG lacks %q", name)
	}
}

func TestLineChartSVGEdgeCases(t *testing.T) {
	cases := map[string][]Series{
		"nil":          nil,
		"empty series": {{Name: "a"}, {Name: "b"}},
		"single point": {{Name: "one", Points: []Point{{3, 42}}}},
		"zero point":   {{Name: "zero", Points: []Point{{0, 0}}}},
		"flat":         {{Name: "flat", Points: []Point{{1, 5}, {2, 5}, {3, 5}}}},
		"vertical":     {{Name: "v", Points: []Point{{2, 1}, {2, 9}}}},
		"negative":     {{Name: "neg", Points: []Point{{-5, -3}, {5, 2}}}},
		"tiny":         {{Name: "tiny", Points: []Point{{0, 0.001}, {1, 0.0042}}}},
		"huge":         {{Name: "huge", Points: []Point{{0, 1e9}, {1e7, 3e9}}}},
		"non-finite":   {{Name: "nf", Points: []Point{{0, math.NaN()}, {math.Inf(1), 1}, {1, 2}}}},
		"many series": func() []Series {
			var s []Series
			for i := range 20 {
				s = append(s, Series{Name: "s" + formatInt(int64(i)), Points: []Point{{0, float64(i)}, {1, float64(i + 1)}}})
			}
			return s
		}(),
	}
	for name, series := range cases {
		t.Run(name, func(t *testing.T) {
			svg := LineChartSVG(name, "x", "y", series)
			c := parseSVG(t, svg)
			nonEmpty := 0
			for _, s := range series {
				if len(s.Points) > 0 {
					nonEmpty++
				}
			}
			if c["polyline"] != nonEmpty {
				t.Errorf("polylines %d, want %d", c["polyline"], nonEmpty)
			}
			if strings.Contains(svg, "NaN") || strings.Contains(svg, "Inf") {
				t.Errorf("non-finite coordinates:\n%s", svg)
			}
			for _, s := range series {
				if !strings.Contains(svg, s.Name) {
					t.Errorf("legend lacks %q", s.Name)
				}
			}
		})
	}
}

func TestNiceTicks(t *testing.T) {
	for _, tc := range []struct{ lo, hi float64 }{{0, 1}, {0, 100}, {0, 123_456}, {3, 3}, {0, 0}, {-7, 13}, {0.001, 0.0042}, {1000, 1010}} {
		ticks := niceTicks(tc.lo, tc.hi, 5)
		if len(ticks) < 2 || len(ticks) > 12 {
			t.Errorf("%v: %d ticks %v", tc, len(ticks), ticks)
			continue
		}
		if ticks[0] > tc.lo || ticks[len(ticks)-1] < tc.hi {
			t.Errorf("%v: ticks %v do not cover", tc, ticks)
		}
	}
	if got := niceTicks(0, 100, 5); len(got) != 6 || got[1] != 20 {
		t.Errorf("0-100: %v", got)
	}
}

func TestSVGHelpers(t *testing.T) {
	rs := reportResults()
	svg := ThroughputVsCrossSVG(rs)
	c := parseSVG(t, svg)
	if c["polyline"] != 2 {
		t.Errorf("throughput chart: %d lines, want 2 (batch 1, batch 100)", c["polyline"])
	}
	for _, want := range []string{"batch 1<", "batch 100<", "transfers/s", "cross-shard"} {
		if !strings.Contains(svg, want) {
			t.Errorf("throughput chart lacks %q", want)
		}
	}
	// batch 100 points sorted by cross %: 0, 30, 100 → x increasing.
	if xs := polylineXs(t, svg, 1); len(xs) != 3 || !(xs[0] < xs[1] && xs[1] < xs[2]) {
		t.Errorf("batch 100 points not sorted by x: %v", xs)
	}

	svg = LatencyVsLoadSVG(rs)
	c = parseSVG(t, svg)
	if c["polyline"] != 2 {
		t.Errorf("latency chart: %d lines, want 2 (p50, p99)", c["polyline"])
	}
	for _, want := range []string{"p50", "p99", "offered load", "latency (ms)", "20k"} {
		if !strings.Contains(svg, want) {
			t.Errorf("latency chart lacks %q", want)
		}
	}
	if xs := polylineXs(t, svg, 0); len(xs) != 2 || !(xs[0] < xs[1]) {
		t.Errorf("p50 points not sorted by x: %v", xs)
	}

	// Empty and nil inputs, and results with no matching target.
	for _, in := range [][]*Result{nil, {}, {nil}, {{Name: "pg", Target: "postgres"}}} {
		parseSVG(t, ThroughputVsCrossSVG(in))
		parseSVG(t, LatencyVsLoadSVG(in))
	}
}

// polylineXs returns the x coordinates of the i-th polyline.
func polylineXs(t *testing.T, svg string, i int) []float64 {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(svg))
	n := 0
	for {
		tok, err := d.Token()
		if err != nil {
			t.Fatalf("polyline %d not found", i)
		}
		se, ok := tok.(xml.StartElement)
		if !ok || se.Name.Local != "polyline" {
			continue
		}
		if n++; n-1 != i {
			continue
		}
		for _, a := range se.Attr {
			if a.Name.Local == "points" {
				var xs []float64
				for p := range strings.FieldsSeq(a.Value) {
					var x, y float64
					if _, err := fmt.Sscanf(p, "%g,%g", &x, &y); err != nil {
						t.Fatalf("bad point %q: %v", p, err)
					}
					xs = append(xs, x)
				}
				return xs
			}
		}
	}
}

func TestReportFormatting(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{formatInt(0), "0"},
		{formatInt(999), "999"},
		{formatInt(1000), "1,000"},
		{formatInt(-1234567), "-1,234,567"},
		{formatNum(12345.4), "12,345"},
		{formatNum(99.94), "99.9"},
		{formatNum(0), "0"},
		{formatMs(1.2345), "1.23"},
		{formatMs(12.345), "12.3"},
		{formatMs(123.45), "123"},
		{formatMs(0.001), "0.001"},
		{formatMs(4321.7), "4,322"},
		{formatPct(0.3), "30%"},
		{formatPct(0.2987), "29.9%"},
		{formatSig(2, 3, 3), "2.00"},
		{formatRatio(2), "2"},
		{formatRatio(0.5), "0.5"},
		{formatRatio(2.3456), "2.35"},
		{formatRatio(1234.5), "1,235"},
		{formatErrors(nil), "0"},
		{formatErrors(map[string]int64{"a": 2, "b": 2}), "4 (a 2, b 2)"},
		{tickLabel(250_000, 50_000, 250_000), "250k"},
		{tickLabel(2_500_000, 500_000, 3e6), "2.5M"},
		{tickLabel(8000, 2000, 12_000), "8k"},
		{tickLabel(0.25, 0.05, 1), "0.25"},
		{tickLabel(2500, 500, 3000), "2,500"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

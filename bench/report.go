package bench

import (
	"cmp"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Report is a benchmark session's results, the ratios between them and notes; it
// renders as JSON (WriteJSON), markdown (Markdown) and SVG charts (LineChartSVG and
// its helpers).
type Report struct {
	// Title heads the markdown ("Shardledger benchmark" when empty).
	Title string `json:"title,omitempty"`
	// Machine describes the hardware and software the session ran on.
	Machine string `json:"machine"`
	// Command is the exact command line that produced the report.
	Command string    `json:"command"`
	Started time.Time `json:"started"`
	Results []*Result `json:"results"`
	Ratios  []Ratio   `json:"ratios"`
	Notes   []string  `json:"notes,omitempty"`
}

// Ratio compares the throughput of two results (looked up by Result.Name).
type Ratio struct {
	Name        string `json:"name"`
	Numerator   string `json:"numerator"`
	Denominator string `json:"denominator"`
	// Value is Numerator's transfers/s over Denominator's (0 when either result is
	// missing or the denominator has no throughput).
	Value float64 `json:"value"`
	// Target is the minimum Value wanted (e.g. 2.0); 0 when the ratio is informative
	// only.
	Target float64 `json:"target,omitempty"`
	// Met reports Target > 0 && Value >= Target.
	Met  bool   `json:"met"`
	Note string `json:"note,omitempty"`
}

// Result returns the first result named name, or nil.
func (r *Report) Result(name string) *Result {
	for _, res := range r.Results {
		if res != nil && res.Name == name {
			return res
		}
	}
	return nil
}

// AddNote appends a note to the report.
func (r *Report) AddNote(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// AddRatio appends the ratio num.TransfersPerSec / den.TransfersPerSec of the results
// named num and den, checked against target (0: no target). A missing result or a
// denominator without throughput gives Value 0, Met false and a note.
func (r *Report) AddRatio(name, num, den string, target float64) {
	ra := Ratio{Name: name, Numerator: num, Denominator: den, Target: target}
	n, d := r.Result(num), r.Result(den)
	var missing []string
	if n == nil {
		missing = append(missing, strconv.Quote(num))
	}
	if d == nil {
		missing = append(missing, strconv.Quote(den))
	}
	switch {
	case len(missing) > 0:
		ra.Note = "missing result " + strings.Join(missing, " and ")
	case !(d.TransfersPerSec > 0) || math.IsInf(d.TransfersPerSec, 0):
		ra.Note = fmt.Sprintf("result %q has no throughput", den)
	case !(n.TransfersPerSec >= 0) || math.IsInf(n.TransfersPerSec, 0):
		ra.Note = fmt.Sprintf("result %q has an invalid throughput", num)
	default:
		ra.Value = n.TransfersPerSec / d.TransfersPerSec
		ra.Met = target > 0 && ra.Value >= target
	}
	r.Ratios = append(r.Ratios, ra)
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}

// Markdown renders the report: title, machine, command, results table, ratios table
// and notes.
func (r *Report) Markdown() string {
	var b strings.Builder
	title := r.Title
	if title == "" {
		title = "Shardledger benchmark"
	}
	fmt.Fprintf(&b, "# %s\n\n", mdText(title))
	machine := r.Machine
	if machine == "" {
		machine = "unknown"
	}
	fmt.Fprintf(&b, "**Machine:** %s\n\n", mdText(machine))
	if !r.Started.IsZero() {
		fmt.Fprintf(&b, "**Started:** %s\n\n", r.Started.UTC().Format(time.RFC3339))
	}
	b.WriteString("**Command:**\n\n")
	fence := strings.Repeat("`", max(3, longestRun(r.Command, '`')+1))
	fmt.Fprintf(&b, "%s\n%s\n%s\n\n", fence, r.Command, fence)

	b.WriteString("## Results\n\n")
	if len(r.Results) == 0 {
		b.WriteString("No results.\n\n")
	} else {
		b.WriteString("| name | target | cross % (configured / measured) | batch | concurrency | rate (open loop, req/s) | accounts | transfers/s | runs (transfers/s) | p50 | p90 | p99 | p99.9 | max (ms) | errors | retries | CPU s per 1k transfers | CPU steal % |\n")
		b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|\n")
		for _, res := range r.Results {
			if res == nil {
				continue
			}
			w := res.Workload
			rate := "closed loop"
			if w.Rate > 0 {
				rate = formatNum(w.Rate)
			}
			accounts := formatInt(int64(w.Accounts))
			if w.Zipf > 0 {
				accounts += " (zipf " + strconv.FormatFloat(w.Zipf, 'g', 4, 64) + ")"
			}
			cpu := "—"
			if res.CPUSecondsPer1k > 0 {
				cpu = formatSig(res.CPUSecondsPer1k, 3, 4)
			}
			steal := "—"
			if res.StealPct != nil {
				steal = strconv.FormatFloat(*res.StealPct, 'f', 1, 64)
			}
			cells := []string{
				mdCell(res.Name),
				mdCell(res.Target),
				formatPct(w.CrossRatio) + " / " + formatPct(res.CrossMeasured),
				formatInt(int64(w.Batch)),
				formatInt(int64(w.Concurrency)),
				rate,
				accounts,
				formatNum(res.TransfersPerSec),
				formatRuns(res.Runs),
				formatMs(res.Latency.P50),
				formatMs(res.Latency.P90),
				formatMs(res.Latency.P99),
				formatMs(res.Latency.P999),
				formatMs(res.Latency.Max),
				mdCell(formatErrors(res.Errors)),
				formatInt(res.Retries),
				cpu,
				steal,
			}
			b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
		}
		b.WriteString("\nLatencies are per request, in milliseconds; open-loop latency counts from the intended start. " +
			"A row with runs listed is the run with the median transfers/s of those (its latencies and counts are that run's).\n\n")
	}

	b.WriteString("## Ratios\n\n")
	if len(r.Ratios) == 0 {
		b.WriteString("No ratios.\n\n")
	} else {
		b.WriteString("| ratio | value | target | met |\n|---|--:|--:|:-:|\n")
		for _, ra := range r.Ratios {
			value, target, met := "—", "—", "—"
			if ra.Note == "" {
				value = formatRatio(ra.Value) + "×"
			}
			if ra.Target > 0 {
				target = "≥ " + formatRatio(ra.Target) + "×"
				met = "✗"
				if ra.Met {
					met = "✓"
				}
			}
			name := mdCell(ra.Name) + " (" + mdCell(ra.Numerator) + " ÷ " + mdCell(ra.Denominator) + ")"
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", name, value, target, met)
		}
		b.WriteString("\n")
	}

	var notes []string
	for _, n := range r.Notes {
		notes = append(notes, mdText(n))
	}
	for _, ra := range r.Ratios {
		if ra.Note != "" {
			notes = append(notes, "ratio "+mdText(ra.Name)+": "+mdText(ra.Note))
		}
	}
	for _, res := range r.Results {
		if res != nil && res.Note != "" {
			notes = append(notes, mdText(res.Name)+": "+mdText(res.Note))
		}
	}
	if len(notes) > 0 {
		b.WriteString("## Notes\n\n")
		for _, n := range notes {
			b.WriteString("- " + n + "\n")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// formatErrors sums the error counts and names the (up to three) most frequent kinds.
func formatErrors(errs map[string]int64) string {
	var total int64
	type kc struct {
		kind  string
		count int64
	}
	kinds := make([]kc, 0, len(errs))
	for k, c := range errs {
		total += c
		kinds = append(kinds, kc{k, c})
	}
	if total == 0 {
		return "0"
	}
	slices.SortFunc(kinds, func(a, b kc) int {
		if c := cmp.Compare(b.count, a.count); c != 0 {
			return c
		}
		return strings.Compare(a.kind, b.kind)
	})
	const top = 3
	parts := make([]string, 0, top+1)
	for i, k := range kinds {
		if i == top {
			parts = append(parts, fmt.Sprintf("+%d more", len(kinds)-top))
			break
		}
		parts = append(parts, k.kind+" "+formatInt(k.count))
	}
	return formatInt(total) + " (" + strings.Join(parts, ", ") + ")"
}

// mdText flattens s to one line.
func mdText(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// mdCell makes s safe inside a markdown table cell.
func mdCell(s string) string {
	return strings.ReplaceAll(mdText(s), "|", `\|`)
}

func longestRun(s string, c byte) int {
	best, run := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			run++
			best = max(best, run)
		} else {
			run = 0
		}
	}
	return best
}

// formatInt formats n with thousands separators: 12,345.
func formatInt(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// formatNum formats a rate: whole numbers with separators from 100 up, 3 significant
// digits below.
// formatRuns lists the transfers/s of a repeated workload's runs, "—" for one run.
func formatRuns(runs []float64) string {
	if len(runs) < 2 {
		return "—"
	}
	parts := make([]string, len(runs))
	for i, v := range runs {
		parts[i] = formatNum(v)
	}
	return strings.Join(parts, " / ")
}

func formatNum(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "—"
	case math.Abs(v) >= 100:
		return formatInt(int64(math.Round(v)))
	}
	return formatSig(v, 3, 3)
}

// formatMs formats milliseconds: whole numbers from 1,000 up, else 3 significant
// digits (at most 3 decimals: the histogram's resolution is 1 µs).
func formatMs(v float64) string {
	if math.Abs(v) >= 1000 {
		return formatNum(v)
	}
	return formatSig(v, 3, 3)
}

// formatPct formats a fraction as a percentage.
func formatPct(f float64) string {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "—"
	}
	return strconv.FormatFloat(math.Round(f*1000)/10, 'f', -1, 64) + "%"
}

// formatRatio formats a ratio with up to 3 significant digits, without trailing zeros.
func formatRatio(v float64) string {
	s := formatSig(v, 3, 3)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// formatSig formats v with sig significant digits and at most maxDec decimals.
func formatSig(v float64, sig, maxDec int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	if v == 0 {
		return "0"
	}
	dec := sig - 1 - int(math.Floor(math.Log10(math.Abs(v))))
	dec = min(max(dec, 0), maxDec)
	if dec == 0 && math.Abs(v) >= 1000 {
		return formatInt(int64(math.Round(v)))
	}
	return strconv.FormatFloat(v, 'f', dec, 64)
}

// Series is one line of a chart.
type Series struct {
	Name   string
	Points []Point
}

// Point is one point of a series.
type Point struct{ X, Y float64 }

// Chart geometry.
const (
	svgWidth   = 760
	svgHeight  = 440 // at least: a long legend makes the image taller
	plotLeft   = 80
	plotRight  = 570
	plotTop    = 50
	plotBottom = 370
)

// chartColors are distinct, colour-blind friendly (Okabe-Ito, then extras).
var chartColors = []string{"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"}

// LineChartSVG draws the series as a self-contained SVG line chart: axes with nice
// ticks, one coloured line (with point markers) per series and a legend. The y axis
// includes 0 when all values are non-negative. Points with non-finite coordinates are
// skipped; empty input draws empty axes with a "no data" mark.
func LineChartSVG(title, xLabel, yLabel string, series []Series) string {
	clean := make([]Series, len(series))
	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymin, ymax := math.Inf(1), math.Inf(-1)
	for i, s := range series {
		clean[i].Name = s.Name
		for _, p := range s.Points {
			if math.IsNaN(p.X) || math.IsInf(p.X, 0) || math.IsNaN(p.Y) || math.IsInf(p.Y, 0) {
				continue
			}
			clean[i].Points = append(clean[i].Points, p)
			xmin, xmax = min(xmin, p.X), max(xmax, p.X)
			ymin, ymax = min(ymin, p.Y), max(ymax, p.Y)
		}
	}
	empty := math.IsInf(xmin, 1)
	if empty {
		xmin, xmax, ymin, ymax = 0, 1, 0, 1
	}
	if ymin > 0 {
		ymin = 0
	}
	xt := niceTicks(xmin, xmax, 5)
	yt := niceTicks(ymin, ymax, 5)
	x0, x1 := xt[0], xt[len(xt)-1]
	y0, y1 := yt[0], yt[len(yt)-1]
	px := func(x float64) float64 { return plotLeft + (x-x0)/(x1-x0)*(plotRight-plotLeft) }
	py := func(y float64) float64 { return plotBottom - (y-y0)/(y1-y0)*(plotBottom-plotTop) }

	height := max(svgHeight, plotTop+10+20*len(clean)+10)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgWidth, height, svgWidth, height)
	fmt.Fprintf(&b, "<title>%s</title>\n", esc(title))
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>`+"\n", svgWidth, height)
	fmt.Fprintf(&b, `<text x="%d" y="28" text-anchor="middle" font-size="16" font-weight="bold">%s</text>`+"\n",
		(plotLeft+plotRight)/2, esc(title))

	// Grid and ticks.
	xstep, ystep := xt[1]-xt[0], yt[1]-yt[0]
	xmaxAbs, ymaxAbs := max(math.Abs(x0), math.Abs(x1)), max(math.Abs(y0), math.Abs(y1))
	for _, t := range xt {
		x := px(t)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e5e5e5"/>`+"\n", x, plotTop, x, plotBottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, plotBottom+18, esc(tickLabel(t, xstep, xmaxAbs)))
	}
	for _, t := range yt {
		y := py(t)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", plotLeft, y, plotRight, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", plotLeft-8, y+4, esc(tickLabel(t, ystep, ymaxAbs)))
	}
	// Axes.
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333333"/>`+"\n", plotLeft, plotBottom, plotRight, plotBottom)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333333"/>`+"\n", plotLeft, plotTop, plotLeft, plotBottom)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", (plotLeft+plotRight)/2, plotBottom+42, esc(xLabel))
	fmt.Fprintf(&b, `<text x="20" y="%d" text-anchor="middle" transform="rotate(-90 20 %d)">%s</text>`+"\n",
		(plotTop+plotBottom)/2, (plotTop+plotBottom)/2, esc(yLabel))
	if empty {
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" fill="#888888">no data</text>`+"\n",
			(plotLeft+plotRight)/2, (plotTop+plotBottom)/2)
	}

	// Series and legend.
	for i, s := range clean {
		color := chartColors[i%len(chartColors)]
		dash := ""
		if i >= len(chartColors) {
			dash = fmt.Sprintf(` stroke-dasharray="%d 4"`, 4+4*(i/len(chartColors)))
		}
		if len(s.Points) > 0 {
			var pts []string
			for _, p := range s.Points {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p.X), py(p.Y)))
			}
			fmt.Fprintf(&b, `<g><title>%s</title>`+"\n", esc(s.Name))
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", color, dash, strings.Join(pts, " "))
			for _, p := range s.Points {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", px(p.X), py(p.Y), color)
			}
			b.WriteString("</g>\n")
		}
		ly := plotTop + 10 + 20*i
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n",
			plotRight+20, ly, plotRight+44, ly, color, dash)
		label := s.Name
		if len(s.Points) == 0 {
			label += " (no data)"
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", plotRight+50, ly+4, esc(label))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// ThroughputVsCrossSVG charts closed-loop ledger throughput against the configured
// cross-shard percentage, one series per batch size.
func ThroughputVsCrossSVG(results []*Result) string {
	// Compare like with like: the population most runs used.
	accounts := map[int]int{}
	for _, r := range results {
		if r != nil && r.Target == "ledger" {
			accounts[r.Workload.Accounts]++
		}
	}
	common := 0
	for n, c := range accounts {
		if c > accounts[common] {
			common = n
		}
	}
	byBatch := map[int][]Point{}
	for _, r := range results {
		if r == nil || r.Target != "ledger" || r.Workload.Rate != 0 || r.Workload.Accounts != common {
			continue
		}
		byBatch[r.Workload.Batch] = append(byBatch[r.Workload.Batch], Point{X: r.Workload.CrossRatio * 100, Y: r.TransfersPerSec})
	}
	var series []Series
	for _, batch := range slices.Sorted(maps.Keys(byBatch)) {
		pts := byBatch[batch]
		sortPoints(pts)
		series = append(series, Series{Name: "batch " + formatInt(int64(batch)), Points: pts})
	}
	return LineChartSVG("Ledger throughput vs cross-shard ratio (closed loop)", "cross-shard transfers (%)", "transfers/s", series)
}

// LatencyVsLoadSVG charts open-loop ledger latency (p50, p99) against the offered load
// (Rate × Batch transfers/s).
func LatencyVsLoadSVG(results []*Result) string {
	p50 := Series{Name: "p50"}
	p99 := Series{Name: "p99"}
	for _, r := range results {
		if r == nil || r.Target != "ledger" || !(r.Workload.Rate > 0) {
			continue
		}
		x := r.Workload.Rate * float64(r.Workload.Batch)
		p50.Points = append(p50.Points, Point{X: x, Y: r.Latency.P50})
		p99.Points = append(p99.Points, Point{X: x, Y: r.Latency.P99})
	}
	sortPoints(p50.Points)
	sortPoints(p99.Points)
	return LineChartSVG("Ledger latency vs offered load (open loop)", "offered load (transfers/s)", "latency (ms)", []Series{p50, p99})
}

func sortPoints(pts []Point) {
	slices.SortStableFunc(pts, func(a, b Point) int { return cmp.Compare(a.X, b.X) })
}

// esc escapes s for XML text and attribute values.
func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // a strings.Builder does not fail
	return b.String()
}

// niceTicks returns about n evenly spaced round tick values covering [lo, hi].
func niceTicks(lo, hi float64, n int) []float64 {
	if hi < lo {
		lo, hi = hi, lo
	}
	if hi == lo {
		d := math.Abs(lo) * 0.1
		if d == 0 {
			d = 1
		}
		if lo == 0 {
			hi = 1
		} else {
			lo, hi = lo-d, hi+d
		}
	}
	step := niceNum((hi-lo)/float64(max(n-1, 1)), true)
	start := math.Floor(lo/step) * step
	end := math.Ceil(hi/step) * step
	var ticks []float64
	for i := 0; ; i++ {
		t := start + float64(i)*step
		if t > end+step/2 || i > 100 {
			break
		}
		// Avoid -0 and float noise in labels.
		t = math.Round(t/step) * step
		if t == 0 {
			t = 0
		}
		ticks = append(ticks, t)
	}
	if len(ticks) < 2 {
		ticks = []float64{start, start + step}
	}
	return ticks
}

// niceNum rounds x to 1, 2, 5 or 10 times a power of ten (Heckbert).
func niceNum(x float64, round bool) float64 {
	exp := math.Floor(math.Log10(x))
	f := x / math.Pow(10, exp)
	var nf float64
	if round {
		switch {
		case f < 1.5:
			nf = 1
		case f < 3:
			nf = 2
		case f < 7:
			nf = 5
		default:
			nf = 10
		}
	} else {
		switch {
		case f <= 1:
			nf = 1
		case f <= 2:
			nf = 2
		case f <= 5:
			nf = 5
		default:
			nf = 10
		}
	}
	return nf * math.Pow(10, exp)
}

// tickLabel formats a tick value given the tick step and the axis' largest absolute
// tick (so one axis uses one unit): 1.2M, 40k, 2,500, 0.25.
func tickLabel(v, step, axisMax float64) string {
	switch {
	case v == 0:
		return "0"
	case axisMax >= 1e6 && step >= 1e5:
		return strconv.FormatFloat(v/1e6, 'f', decimalsFor(step/1e6), 64) + "M"
	case axisMax >= 1e4 && step >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', decimalsFor(step/1e3), 64) + "k"
	case step >= 1:
		return formatInt(int64(math.Round(v)))
	}
	return strconv.FormatFloat(v, 'f', decimalsFor(step), 64)
}

// decimalsFor is the number of decimals that shows multiples of step exactly.
func decimalsFor(step float64) int {
	if step >= 1 {
		return 0
	}
	return min(int(math.Ceil(-math.Log10(step)-1e-9)), 10)
}

package bench

import "testing"

func TestParseCPUStat(t *testing.T) {
	for _, tc := range []struct {
		in    string
		want  cpuStat
		valid bool
	}{
		{"cpu  100 5 50 800 10 1 2 32 0 0\ncpu0 50 2 25 400 5 0 1 16 0 0\n", cpuStat{total: 1000, steal: 32}, true},
		{"cpu  1 2 3 4 5 6 7 8\n", cpuStat{total: 36, steal: 8}, true},
		{"cpu  1 2 3 4 5 6 7\n", cpuStat{}, false}, // no steal counter
		{"cpu0 1 2 3 4 5 6 7 8\n", cpuStat{}, false},
		{"cpu  1 2 x 4 5 6 7 8\n", cpuStat{}, false},
		{"", cpuStat{}, false},
	} {
		got, ok := parseCPUStat([]byte(tc.in))
		if ok != tc.valid || got != tc.want {
			t.Errorf("parseCPUStat(%q) = %+v, %v; want %+v, %v", tc.in, got, ok, tc.want, tc.valid)
		}
	}
}

func TestStealPct(t *testing.T) {
	a := cpuStat{total: 1000, steal: 10}
	if got, ok := stealPct(a, cpuStat{total: 1400, steal: 90}); !ok || got != 20 {
		t.Errorf("stealPct = %v, %v; want 20, true", got, ok)
	}
	if _, ok := stealPct(a, a); ok {
		t.Error("no time passed: want unknown")
	}
	if _, ok := stealPct(a, cpuStat{total: 900, steal: 5}); ok {
		t.Error("counters went back: want unknown")
	}
}

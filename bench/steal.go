package bench

import (
	"bytes"
	"os"
	"strconv"
)

// cpuStat is the machine's CPU time counters (the "cpu" line of Linux's /proc/stat), in
// clock ticks summed over the CPUs.
type cpuStat struct {
	total uint64 // user, nice, system, idle, iowait, irq, softirq, steal
	steal uint64 // time the hypervisor gave this VM's CPUs to others
}

// readCPUStat reads the counters; false where there is no /proc/stat.
func readCPUStat() (cpuStat, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}, false
	}
	return parseCPUStat(b)
}

// parseCPUStat parses the first line of /proc/stat: "cpu" and at least 8 counters.
func parseCPUStat(b []byte) (cpuStat, bool) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return cpuStat{}, false
	}
	var s cpuStat
	for i := 1; i <= 8; i++ {
		v, err := strconv.ParseUint(string(f[i]), 10, 64)
		if err != nil {
			return cpuStat{}, false
		}
		s.total += v
		if i == 8 {
			s.steal = v
		}
	}
	return s, true
}

// stealPct is the share of the CPU time between a and b that the hypervisor took, in
// percent; false when no time passed or the counters went back.
func stealPct(a, b cpuStat) (float64, bool) {
	if b.total <= a.total || b.steal < a.steal {
		return 0, false
	}
	return float64(b.steal-a.steal) / float64(b.total-a.total) * 100, true
}

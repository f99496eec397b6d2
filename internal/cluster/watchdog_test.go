package cluster

import (
	"bytes"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

// testRunMax bounds one cluster test (start, load, faults, close). The tests take
// seconds; a test still running after this is stuck, and the watchdog ends the whole
// binary with the test's name and the stuck goroutines as the last lines of output, where
// CI's truncated log shows them (go test's own -timeout names the test at the top of a
// dump that is cut off).
const testRunMax = 4 * time.Minute

// watchdog ends the test binary if t runs longer than testRunMax. It prints every
// goroutine, then the goroutines in this module's code, then the test's name.
func watchdog(t *testing.T) {
	t.Helper()
	timer := time.AfterFunc(testRunMax, func() {
		var all bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&all, 2)
		os.Stderr.Write(all.Bytes())
		fmt.Fprintf(os.Stderr, "\n==== goroutines in shardledger code ====\n")
		for _, g := range strings.Split(all.String(), "\n\n") {
			if strings.Contains(g, "shardledger/shardledger/") && !strings.Contains(g, "watchdog") {
				fmt.Fprintf(os.Stderr, "%s\n\n", g)
			}
		}
		fmt.Fprintf(os.Stderr, "==== %s still running after %v: stuck (goroutines above) ====\n", t.Name(), testRunMax)
		os.Exit(3)
	})
	t.Cleanup(func() { timer.Stop() })
}

package node

import (
	"runtime"
	"testing"
)

func TestSetProcs(t *testing.T) {
	def := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(def) })

	t.Setenv("GOMAXPROCS", "")
	procs, prev := SetProcs()
	if prev != def || procs != ProcsPerCPU*def || runtime.GOMAXPROCS(0) != procs {
		t.Fatalf("SetProcs() = %d, %d (GOMAXPROCS now %d); want %d, %d", procs, prev, runtime.GOMAXPROCS(0), ProcsPerCPU*def, def)
	}
	runtime.GOMAXPROCS(def)

	// An operator's GOMAXPROCS stands.
	t.Setenv("GOMAXPROCS", "3")
	procs, prev = SetProcs()
	if procs != def || prev != def || runtime.GOMAXPROCS(0) != def {
		t.Fatalf("with GOMAXPROCS set: SetProcs() = %d, %d (GOMAXPROCS now %d); want it left at %d", procs, prev, runtime.GOMAXPROCS(0), def)
	}
}

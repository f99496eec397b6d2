package node

import (
	"os"
	"runtime"
)

// ProcsPerCPU is how many Go processors (GOMAXPROCS) a node runs per CPU it may use.
//
// A node spends much of its time in blocking system calls: each raft round fsyncs the
// log (fdatasync) and writes and reads the transport's and the API's sockets. A
// goroutine in a system call keeps its processor until the runtime's monitor takes it
// back, and with as many processors as CPUs the raft step workers, whose latency is
// every request's latency, wait behind the HTTP handlers and the transport's goroutines
// in Go's run queues (an execution trace of the dev cluster at 64 clients showed about
// 15 goroutines runnable on average for 2 processors). Twice as many processors as
// CPUs lets the kernel run what is ready while others wait in system calls.
// Measured on 2 CPUs (dev cluster, fresh clusters, one round, GOMAXPROCS 2 / 4 / 8):
// intra-shard, 1 transfer per request, 64 clients 5,885 / 7,086 / 6,754 transfers/s;
// cross-shard the same 2,918 / 3,654 / 3,732; cross-shard open loop at 1,200/s p50
// 9.3 / 6.8 / 6.6 ms, p99 25.3 / 19.0 / 19.1 ms; 1,000 transfers per request
// cross-shard 9,000 / 8,930 / 8,400, intra-shard 43,266 / 41,933 / 39,729 (CPU per
// transfer +5 % and +15 %: more processors cost a little where batches, not rounds,
// set the pace).
const ProcsPerCPU = 2

// SetProcs sets GOMAXPROCS to ProcsPerCPU times the processors the Go runtime chose (it
// counts the CPUs the process may use, container limits included), unless the
// GOMAXPROCS environment variable sets them. It returns the setting in force and the
// one before.
func SetProcs() (procs, prev int) {
	prev = runtime.GOMAXPROCS(0)
	if os.Getenv("GOMAXPROCS") != "" {
		return prev, prev
	}
	runtime.GOMAXPROCS(ProcsPerCPU * prev)
	return ProcsPerCPU * prev, prev
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestDevClusterProcessRestart runs the real `ledgerd dev` process, talks Connect JSON to
// it as the README does, stops it with SIGTERM and starts it again on the same data
// directory: every account and transfer is still there.
func TestDevClusterProcessRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds and runs the ledgerd binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "ledgerd")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	listen := freeAddr(t)
	raftBase := freePortRun(t, 3)
	data := filepath.Join(dir, "data")
	start := func(extra ...string) (*exec.Cmd, *syncBuffer) {
		out := &syncBuffer{}
		args := append([]string{"dev", "--data-dir", data, "--listen", listen, "--raft-port-base", fmt.Sprint(raftBase)}, extra...)
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitHealthy(t, "http://"+listen, out)
		return cmd, out
	}
	stop := func(cmd *exec.Cmd, out *syncBuffer) {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("ledgerd dev exited with %v\n%s", err, out)
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("ledgerd dev did not stop on SIGTERM\n%s", out)
		}
	}
	base := "http://" + listen + "/ledger.v1.LedgerService/"
	cmd, out := start()
	// The banner is printed before the API serves; its bytes may still be on their way
	// through the pipe.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out.String(), "curl"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("dev banner does not show how to call the cluster:\n%s", out)
			break
		}
	}
	post(t, base+"CreateAccounts", `{"accounts":[{"id":"alice","currency":"USD"},{"id":"bob","currency":"USD"}]}`, `ACCOUNT_STATUS_CREATED`)
	post(t, base+"CreateTransfers", `{"transfers":[{"id":"t1","debitAccountId":"alice","creditAccountId":"bob","amount":"100","currency":"USD"}]}`, `TRANSFER_STATUS_CREATED`)
	stop(cmd, out)

	cmd, out = start()
	got := post(t, base+"GetAccounts", `{"ids":["alice","bob"]}`, `"creditsPosted":"100"`)
	if !strings.Contains(got, `"debitsPosted":"100"`) {
		t.Fatalf("after restart: %s", got)
	}
	post(t, base+"CreateTransfers", `{"transfers":[{"id":"t1","debitAccountId":"alice","creditAccountId":"bob","amount":"100","currency":"USD"}]}`, `TRANSFER_STATUS_EXISTS`)

	// kill -9: every acknowledged transfer survives (the state machines' unflushed
	// state is rebuilt from the raft log).
	post(t, base+"CreateAccounts", `{"accounts":[{"id":"carol","currency":"USD"}]}`, `ACCOUNT_STATUS_CREATED`)
	for i := 2; i <= 20; i++ {
		post(t, base+"CreateTransfers", fmt.Sprintf(`{"transfers":[{"id":"k%d","debitAccountId":"alice","creditAccountId":"carol","amount":"1","currency":"USD"}]}`, i), `TRANSFER_STATUS_CREATED`)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	debug := freeAddr(t)
	cmd, out = start("--pprof", debug)
	defer stop(cmd, out)
	// alice and carol live on different shards: a transfer acknowledged just before the
	// kill may still have its branches to commit; the restarted coordinator finishes it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		got = post(t, base+"GetAccounts", `{"ids":["alice","carol"]}`, `"id":"carol"`)
		if strings.Contains(got, `"creditsPosted":"19"`) && strings.Contains(got, `"debitsPosted":"119"`) && !strings.Contains(got, "Pending") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after kill -9: %s", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	post(t, base+"CreateTransfers", `{"transfers":[{"id":"k20","debitAccountId":"alice","creditAccountId":"carol","amount":"1","currency":"USD"}]}`, `TRANSFER_STATUS_EXISTS`)

	// The debug address reports every node's storage: its block cache and a line per
	// state machine store.
	report := getWithRetry(t, "http://"+debug+"/debug/storage")
	for _, want := range []string{"node 1: block cache", "node 3: block cache", "l0_sublevels", "shard-1-replica-1", "shard-4-replica-3"} {
		if !strings.Contains(report, want) {
			t.Fatalf("storage report lacks %q:\n%s", want, report)
		}
	}
}

// getWithRetry GETs url until it answers 200 (the server may still be starting).
func getWithRetry(t *testing.T, url string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return string(b)
			}
			err = fmt.Errorf("status %d: %s", res.StatusCode, b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func post(t *testing.T, url, body, want string) string {
	t.Helper()
	res, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
		t.Fatalf("POST %s: %d %s (want %s)", url, res.StatusCode, b, want)
	}
	return string(b)
}

// syncBuffer is a bytes.Buffer safe for the process's output copier and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitHealthy(t *testing.T, base string, out *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		res, err := http.Post(base+"/ledger.v1.AdminService/GetShardMap", "application/json", strings.NewReader("{}"))
		if err == nil {
			var m map[string]any
			_ = json.NewDecoder(res.Body).Decode(&m)
			res.Body.Close()
			if res.StatusCode == http.StatusOK && m["epoch"] != nil {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("ledgerd dev did not become ready\n%s", out)
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// freePortRun finds n consecutive free loopback ports.
func freePortRun(t *testing.T, n int) int {
	for base := 20000 + os.Getpid()%20000; base < 60000; base += n {
		ok := true
		var ls []net.Listener
		for i := 0; i < n; i++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port run")
	return 0
}

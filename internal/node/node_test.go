package node

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/lni/dragonboat/v4"
)

// TestEngineShards checks the engine shard count a NodeHost directory gets: the default
// when new, the legacy count for raft data made before the record, what the record says
// afterwards (whatever the default becomes), and an error for a damaged record.
func TestEngineShards(t *testing.T) {
	read := func(t *testing.T, dir string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, engineShardsFile))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	cases := []struct {
		name    string
		setup   func(t *testing.T, dir string)
		want    uint64
		wantErr string
	}{
		{name: "new, missing dir", setup: func(t *testing.T, dir string) { os.Remove(dir) }, want: EngineShardsDefault},
		{name: "new, empty dir", setup: func(*testing.T, string) {}, want: EngineShardsDefault},
		{name: "raft data, no record (made before it)", setup: func(t *testing.T, dir string) {
			if err := os.MkdirAll(filepath.Join(dir, "somehost"), 0o750); err != nil {
				t.Fatal(err)
			}
		}, want: engineShardsLegacy},
		{name: "recorded", setup: func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, engineShardsFile), []byte("4\n"), 0o640); err != nil {
				t.Fatal(err)
			}
		}, want: 4},
		{name: "damaged record", setup: func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, engineShardsFile), []byte("two"), 0o640); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "want an engine shard count"},
		{name: "zero recorded", setup: func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, engineShardsFile), []byte("0"), 0o640); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "want an engine shard count"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "raft")
			if err := os.MkdirAll(dir, 0o750); err != nil {
				t.Fatal(err)
			}
			c.setup(t, dir)
			got, err := EngineShards(dir)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("EngineShards = %d, %v; want an error with %q", got, err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("EngineShards = %d, %v; want %d", got, err, c.want)
			}
			// Recorded: the next call answers the same, raft data or not.
			if r := read(t, dir); r != strconv.FormatUint(c.want, 10) {
				t.Fatalf("record holds %q, want %d", r, c.want)
			}
			if err := os.MkdirAll(filepath.Join(dir, "more-data"), 0o750); err != nil {
				t.Fatal(err)
			}
			if again, err := EngineShards(dir); err != nil || again != got {
				t.Fatalf("second call = %d, %v; want %d", again, err, got)
			}
		})
	}
}

// TestEngineShardsOpensOldData is why the count is recorded: dragonboat refuses a
// NodeHost directory with another engine shard count than it was made with, and a
// directory made before the record (with the legacy count) still opens.
func TestEngineShardsOpensOldData(t *testing.T) {
	QuietDragonboat()
	dir := filepath.Join(t.TempDir(), "raft")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	open := func(shards uint64) error {
		nh, err := dragonboat.NewNodeHost(NodeHostConfig(dir, addr, 20, shards))
		if err == nil {
			nh.Close()
		}
		return err
	}
	// An old version's directory: legacy count, no record.
	if err := open(engineShardsLegacy); err != nil {
		t.Fatalf("make the old directory: %v", err)
	}
	if EngineShardsDefault != engineShardsLegacy {
		if err := open(EngineShardsDefault); err == nil {
			t.Fatalf("dragonboat opened a directory made with %d engine shards with %d", engineShardsLegacy, EngineShardsDefault)
		}
	}
	n, err := EngineShards(dir)
	if err != nil || n != engineShardsLegacy {
		t.Fatalf("EngineShards of the old directory = %d, %v; want %d", n, err, engineShardsLegacy)
	}
	if err := open(n); err != nil {
		t.Fatalf("open the old directory with its recorded count: %v", err)
	}
}

// A block cache outside its limits is refused before anything starts.
func TestStartRefusesBlockCacheOutOfRange(t *testing.T) {
	for _, b := range []int64{BlockCacheBytesMin - 1, BlockCacheBytesMax + 1, -1} {
		_, err := Start(Config{NodeID: 1, RaftAddress: "127.0.0.1:1", DataDir: t.TempDir(),
			Members: map[uint64]string{1: "127.0.0.1:1"}, ShardCount: 1, BlockCacheBytes: b})
		if err == nil || !strings.Contains(err.Error(), "block cache") {
			t.Fatalf("block cache %d bytes: got %v, want a block cache range error", b, err)
		}
	}
}

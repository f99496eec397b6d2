package meta

import (
	"fmt"
	"io"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// StateMachine is the meta group's replica: the shard map in memory, snapshotted whole.
type StateMachine struct {
	m       *raftv1.ShardMap
	applied uint64
}

// Query asks the meta state machine for its map.
type Query struct{}

// QueryResult is the answer to a Query: a copy of the map and the applied index.
type QueryResult struct {
	Map     *raftv1.ShardMap
	Applied uint64
}

// NewStateMachine is dragonboat's constructor for meta replicas.
func NewStateMachine(uint64, uint64) sm.IStateMachine {
	return &StateMachine{m: &raftv1.ShardMap{}}
}

// Update applies one entry.
func (s *StateMachine) Update(e sm.Entry) (sm.Result, error) {
	s.applied = e.Index
	cmd := &raftv1.MetaCommand{}
	if err := proto.Unmarshal(e.Cmd, cmd); err != nil {
		return sm.Result{Value: ResultRefused, Data: []byte("entry does not decode: " + err.Error())}, nil
	}
	code, msg := Apply(s.m, cmd)
	return sm.Result{Value: code, Data: []byte(msg)}, nil
}

// Lookup answers a Query.
func (s *StateMachine) Lookup(q interface{}) (interface{}, error) {
	if _, ok := q.(Query); !ok {
		return nil, fmt.Errorf("meta lookup: unexpected query %T", q)
	}
	return QueryResult{Map: proto.Clone(s.m).(*raftv1.ShardMap), Applied: s.applied}, nil
}

// SaveSnapshot writes the map.
func (s *StateMachine) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	b, err := proto.Marshal(&raftv1.MetaSnapshot{Map: s.m, Applied: s.applied})
	if err != nil {
		return fmt.Errorf("meta snapshot: %w", err)
	}
	_, err = w.Write(b)
	return err
}

// RecoverFromSnapshot reads the map.
func (s *StateMachine) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("meta recover: %w", err)
	}
	snap := &raftv1.MetaSnapshot{}
	if err := proto.Unmarshal(b, snap); err != nil {
		return fmt.Errorf("meta recover decode: %w", err)
	}
	s.m, s.applied = snap.GetMap(), snap.GetApplied()
	if s.m == nil {
		s.m = &raftv1.ShardMap{}
	}
	return nil
}

// Close does nothing: the map lives in memory.
func (s *StateMachine) Close() error { return nil }

// Package wire encodes and decodes the protobuf messages that stay inside the cluster
// (raft entries and their results, records stored in pebble) with the code that
// protoc-gen-go-vtproto generates beside the regular protobuf code: plain Go per message
// instead of protobuf's reflection-driven codec. The bytes are the same protobuf
// encoding (wire_test.go checks they are identical to proto's deterministic output), so
// stored data and entries written by either codec decode with both.
//
// It is not for bytes from outside the cluster: the generated decoder does not check
// that proto3 strings are valid UTF-8, which protobuf's does. Public requests are
// decoded by connect-go with protobuf's codec, so every string that reaches an entry or
// a record has been checked once at the edge.
package wire

import (
	"fmt"

	"google.golang.org/protobuf/proto"
)

type vtMarshaler interface {
	MarshalVT() ([]byte, error)
}

type vtUnmarshaler interface {
	UnmarshalVT([]byte) error
}

// Marshal encodes m. The output is deterministic (the messages have no maps, and
// fields are written in field number order), so every replica stores the same bytes.
func Marshal(m proto.Message) ([]byte, error) {
	if v, ok := m.(vtMarshaler); ok {
		return v.MarshalVT()
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// Unmarshal decodes b into m, which must be a new (zero) message: unlike
// proto.Unmarshal, the generated decoder merges into what m holds.
func Unmarshal(b []byte, m proto.Message) error {
	if v, ok := m.(vtUnmarshaler); ok {
		if err := v.UnmarshalVT(b); err != nil {
			return fmt.Errorf("decode %T: %w", m, err)
		}
		return nil
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode %T: %w", m, err)
	}
	return nil
}

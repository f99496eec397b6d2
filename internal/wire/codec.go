package wire

import (
	"fmt"

	"google.golang.org/protobuf/proto"
)

// Codec is connect-go's protobuf binary codec ("proto") with the generated encoder:
// messages are written by their MarshalVT code (the same bytes), and read by protobuf's
// own decoder, which checks that strings are UTF-8, so requests from outside the
// cluster are checked as before. Give it to handlers and clients with connect.WithCodec.
type Codec struct{}

// Name is the codec's name in content types; it replaces connect's default "proto".
func (Codec) Name() string { return "proto" }

// IsBinary tells connect the encoding is binary.
func (Codec) IsBinary() bool { return true }

type vtSizedMarshaler interface {
	SizeVT() int
	MarshalToSizedBufferVT([]byte) (int, error)
}

// Marshal encodes a message.
func (c Codec) Marshal(m any) ([]byte, error) { return c.MarshalAppend(nil, m) }

// MarshalAppend encodes a message at the end of dst (connect reuses its buffers).
func (Codec) MarshalAppend(dst []byte, m any) ([]byte, error) {
	if v, ok := m.(vtSizedMarshaler); ok {
		size := v.SizeVT()
		n := len(dst)
		dst = append(dst, make([]byte, size)...)
		if _, err := v.MarshalToSizedBufferVT(dst[n:]); err != nil {
			return nil, fmt.Errorf("encode %T: %w", m, err)
		}
		return dst, nil
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("encode %T: not a protobuf message", m)
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, pm)
}

// Unmarshal decodes a message with protobuf's decoder (UTF-8 checked).
func (Codec) Unmarshal(b []byte, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("decode %T: not a protobuf message", m)
	}
	if err := proto.Unmarshal(b, pm); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", m, err)
	}
	return nil
}

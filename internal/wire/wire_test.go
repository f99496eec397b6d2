package wire

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// fill sets fields of m from rng: every field is set with probability 3/4 (a oneof gets
// one of its members), repeated fields get 0-3 elements, nested messages up to depth 3.
func fill(rng *rand.Rand, m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if od.Fields().Get(rng.IntN(od.Fields().Len())) != fd {
				continue
			}
		} else if rng.IntN(4) == 0 {
			continue
		}
		switch {
		case fd.IsMap():
			continue // no maps in these files (Marshal's determinism relies on it)
		case fd.IsList():
			l := m.Mutable(fd).List()
			for n := rng.IntN(4); n > 0; n-- {
				if fd.Kind() == protoreflect.MessageKind {
					if depth == 0 {
						break
					}
					e := l.NewElement()
					fill(rng, e.Message(), depth-1)
					l.Append(e)
				} else {
					l.Append(scalar(rng, fd))
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			if depth > 0 {
				fill(rng, m.Mutable(fd).Message(), depth-1)
			}
		default:
			m.Set(fd, scalar(rng, fd))
		}
	}
}

func scalar(rng *rand.Rand, fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(rng.IntN(2) == 0)
	case protoreflect.EnumKind:
		vs := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vs.Get(rng.IntN(vs.Len())).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(rng.Uint32()))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(rng.Uint64()))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(rng.Uint32())
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(rng.Uint64() >> rng.IntN(64))
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(rng.Float32())
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(rng.Float64())
	case protoreflect.StringKind:
		return protoreflect.ValueOfString([]string{"", "a", "acct-42", "é€漢字", string(make([]byte, 200))}[rng.IntN(5)])
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{byte(rng.Uint32()), 0, 0xff})
	}
	panic("unhandled kind " + fd.Kind().String())
}

// TestSameBytesAsProto fills every message of the ledger's protobuf files at random and
// checks that Marshal writes exactly protobuf's deterministic encoding and that
// Unmarshal reads it back equal: stored records and entries do not depend on which
// codec wrote them.
func TestSameBytesAsProto(t *testing.T) {
	files := []protoreflect.FileDescriptor{
		raftv1.File_ledger_raft_v1_raft_proto,
		ledgerv1.File_ledger_v1_ledger_proto,
		ledgerv1.File_ledger_v1_admin_proto,
	}
	rng := rand.New(rand.NewPCG(1, 2))
	checked := 0
	for _, f := range files {
		msgs := f.Messages()
		for i := 0; i < msgs.Len(); i++ {
			mt, err := protoregistry.GlobalTypes.FindMessageByName(msgs.Get(i).FullName())
			if err != nil {
				t.Fatalf("find %s: %v", msgs.Get(i).FullName(), err)
			}
			for round := 0; round < 50; round++ {
				m := mt.New()
				fill(rng, m, 3)
				want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m.Interface())
				if err != nil {
					t.Fatalf("proto marshal %s: %v", mt.Descriptor().FullName(), err)
				}
				if _, ok := m.Interface().(vtMarshaler); !ok {
					t.Fatalf("%s has no generated MarshalVT: regenerate the protobuf code", mt.Descriptor().FullName())
				}
				got, err := Marshal(m.Interface())
				if err != nil {
					t.Fatalf("marshal %s: %v", mt.Descriptor().FullName(), err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: encodings differ\n wire  %x\n proto %x", mt.Descriptor().FullName(), got, want)
				}
				back := mt.New().Interface()
				if err := Unmarshal(want, back); err != nil {
					t.Fatalf("unmarshal %s: %v", mt.Descriptor().FullName(), err)
				}
				if !proto.Equal(back, m.Interface()) {
					t.Fatalf("%s: round trip differs", mt.Descriptor().FullName())
				}
				checked++
			}
		}
	}
	if checked < 50*20 {
		t.Fatalf("only %d messages checked", checked)
	}
}

func TestUnmarshalRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{{0xff}, {0x0a, 0x05, 'a'}, {0x08}} {
		if err := Unmarshal(b, &raftv1.Batch{}); err == nil {
			t.Errorf("Unmarshal(%x) = nil, want an error", b)
		}
	}
}

// TestCodec checks the Connect codec writes protobuf's bytes (appending to what the
// buffer holds) and refuses, like protobuf's decoder, a string that is not UTF-8.
func TestCodec(t *testing.T) {
	m := &ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{
		{Id: "t1", DebitAccountId: "a", CreditAccountId: "b", Amount: 7, Currency: "USD"},
		{Id: "t2", DebitAccountId: "é", CreditAccountId: "b", Amount: 1 << 40, Currency: "USD"},
	}}
	want, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var c Codec
	got, err := c.MarshalAppend([]byte("xy"), m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append([]byte("xy"), want...)) {
		t.Fatalf("MarshalAppend = %x, want xy + %x", got, want)
	}
	back := &ledgerv1.CreateTransfersRequest{}
	if err := c.Unmarshal(want, back); err != nil || !proto.Equal(back, m) {
		t.Fatalf("Unmarshal = %v, %v; want %v", back, err, m)
	}
	bad := &ledgerv1.Transfer{}
	badBytes := append([]byte{0x0a, 0x02}, 0xff, 0xfe) // field 1 (id), 2 bytes, not UTF-8
	if err := c.Unmarshal(badBytes, bad); err == nil {
		t.Fatalf("Unmarshal of an id that is not UTF-8 = nil error, want an error")
	}
	if _, err := c.Marshal(struct{}{}); err == nil {
		t.Fatal("Marshal of a non-message = nil error")
	}
}

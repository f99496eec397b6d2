package coordinator

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// Every field of a record is either fixed at creation or carried by its status: a field
// added to TxnRecord must be placed in one or the other.
func TestRecordStatusCoversChangingFields(t *testing.T) {
	fixed := map[protoreflect.Name]bool{"txn_id": true, "transfers": true, "branches": true,
		"begun_at_unix_nano": true, "expires_at_unix_nano": true}
	fields := (&raftv1.TxnRecord{}).ProtoReflect().Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		rec := &raftv1.TxnRecord{TxnId: "t"}
		m := rec.ProtoReflect()
		var v protoreflect.Value
		switch f.Kind() {
		case protoreflect.EnumKind:
			v = protoreflect.ValueOfEnum(1)
		case protoreflect.StringKind:
			v = protoreflect.ValueOfString("x")
		case protoreflect.BoolKind:
			v = protoreflect.ValueOfBool(true)
		case protoreflect.Int32Kind:
			v = protoreflect.ValueOfInt32(7)
		case protoreflect.Int64Kind:
			v = protoreflect.ValueOfInt64(7)
		case protoreflect.Uint64Kind:
			v = protoreflect.ValueOfUint64(7)
		default:
			if !fixed[f.Name()] {
				t.Fatalf("field %s of kind %s: extend this test", f.Name(), f.Kind())
			}
			continue
		}
		m.Set(f, v)
		got := &raftv1.TxnRecord{TxnId: "t"}
		setStatus(got, statusOf(rec))
		carried := got.ProtoReflect().Has(f) && got.ProtoReflect().Get(f).Interface() == v.Interface()
		if fixed[f.Name()] && carried {
			t.Errorf("field %s is fixed at creation but the status carries it", f.Name())
		}
		if !fixed[f.Name()] && !carried {
			t.Errorf("field %s is not fixed at creation: statusOf and setStatus must carry it", f.Name())
		}
	}
}

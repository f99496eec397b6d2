package coordinator

import (
	"time"

	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
)

// Every field of a record is either fixed at creation or carried by its status: a field
// added to TxnRecord must be placed in one or the other.
func TestRecordStatusCoversChangingFields(t *testing.T) {
	fixed := map[protoreflect.Name]bool{"txn_id": true, "transfers": true, "branches": true,
		"begun_at_unix_nano": true, "expires_at_unix_nano": true,
		"router_deadline_unix_nano": true, "open_list": true}
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

// The driver recovers an undecided transaction only RecoverAfter after its Begin and
// past its router's deadline.
func TestDriverRecoverable(t *testing.T) {
	d := &Driver{opts: DriverOptions{RecoverAfter: 2 * time.Second}}
	const begun = int64(1_000 * time.Second)
	for _, tc := range []struct {
		name     string
		deadline int64 // 0: none
		now      int64
		want     bool
	}{
		{name: "young, no deadline", now: begun + int64(time.Second), want: false},
		{name: "old, no deadline", now: begun + 2*int64(time.Second), want: true},
		{name: "old, router deadline ahead", deadline: begun + 20*int64(time.Second), now: begun + 10*int64(time.Second), want: false},
		{name: "old, router deadline reached", deadline: begun + 20*int64(time.Second), now: begun + 20*int64(time.Second), want: true},
		{name: "young, router deadline passed", deadline: begun + int64(time.Second), now: begun + int64(time.Second), want: false},
	} {
		rec := &raftv1.TxnRecord{TxnId: "t", BegunAtUnixNano: begun, RouterDeadlineUnixNano: tc.deadline}
		if got := d.recoverable(rec, tc.now); got != tc.want {
			t.Errorf("%s: recoverable %v, want %v", tc.name, got, tc.want)
		}
	}
}

package ledger

import (
	"encoding/binary"
	"fmt"
)

// ListIndex indexes a set of open records (prepared branches, open transactions) by the
// command or entry that opened them, where one index key per record took a write when
// the record opened and a delete when it closed.
//
// The records opened together are stored as one list under a sequence number the state
// machine keeps (List prefix + big-endian number); each record keeps its list's number.
// Closing a record counts it off its list, and the list is deleted with its last open
// record. The count is stored (Open prefix + number) only while a list is partly closed:
// when a list's records close together, as they mostly do (they were opened by one
// request and are closed by its follow-up), the index costs one write and one delete for
// the whole list.
//
// A list's value: uvarint(number of keys), then each key as uvarint(length) + bytes. The
// list keeps the keys of records that closed since: readers check each record's state.
type ListIndex struct {
	List byte // prefix of the lists
	Open byte // prefix of the stored counts
}

// ListKeysMax bounds the keys of one list (and so its size with the keys' sizes).
const ListKeysMax = 1 << 20

func (x ListIndex) listKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{x.List}, seq)
}

func (x ListIndex) openKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{x.Open}, seq)
}

// Store writes list seq of keys, open of them still open (the others closed before the
// list was stored). seq must be new.
func (x ListIndex) Store(ov *Overlay, seq uint64, keys [][]byte, open int) {
	if seq == 0 || len(keys) > ListKeysMax || open <= 0 || open > len(keys) {
		panic(fmt.Sprintf("ledger: list %d of %d keys, %d open", seq, len(keys), open))
	}
	ov.Set(x.listKey(seq), encodeList(keys))
	if open < len(keys) {
		ov.Set(x.openKey(seq), binary.AppendUvarint(nil, uint64(open)))
	}
}

// Close counts one record off list seq; what closes the record must have opened it (a
// record closes once). The list goes with its last open record.
func (x ListIndex) Close(ov *Overlay, seq uint64) error {
	ok := x.openKey(seq)
	v, counted, err := ov.Get(ok)
	if err != nil {
		return err
	}
	var open uint64
	if counted {
		var w int
		if open, w = binary.Uvarint(v); w <= 0 || w != len(v) {
			return fmt.Errorf("list %d: bad count", seq)
		}
	} else {
		lv, found, err := ov.Get(x.listKey(seq))
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("list %d does not exist", seq)
		}
		if open, err = listLen(lv); err != nil {
			return fmt.Errorf("list %d: %w", seq, err)
		}
	}
	if open == 0 {
		return fmt.Errorf("list %d: a record closed when none is open", seq)
	}
	open--
	if open > 0 {
		ov.Set(ok, binary.AppendUvarint(nil, open))
		return nil
	}
	ov.Delete(x.listKey(seq))
	if counted {
		ov.Delete(ok)
	}
	return nil
}

// Scan calls fn with every key of every list, lists in order (the caller checks whether
// each record is still open). The key is valid only during the call.
func (x ListIndex) Scan(s Scanner, fn func(key []byte) error) error {
	return s.Scan([]byte{x.List}, func(lk, lv []byte) error {
		if err := eachListed(lv, fn); err != nil {
			return fmt.Errorf("list %x: %w", lk[1:], err)
		}
		return nil
	})
}

// encodeList returns a list's value.
func encodeList(keys [][]byte) []byte {
	n := binary.MaxVarintLen64
	for _, k := range keys {
		n += binary.MaxVarintLen64 + len(k)
	}
	v := make([]byte, 0, n)
	v = binary.AppendUvarint(v, uint64(len(keys)))
	for _, k := range keys {
		v = binary.AppendUvarint(v, uint64(len(k)))
		v = append(v, k...)
	}
	return v
}

// listLen returns how many keys a list's value holds.
func listLen(v []byte) (uint64, error) {
	n, w := binary.Uvarint(v)
	if w <= 0 {
		return 0, fmt.Errorf("bad header")
	}
	return n, nil
}

// eachListed calls fn with every key of a list's value (views into v).
func eachListed(v []byte, fn func(key []byte) error) error {
	n, w := binary.Uvarint(v)
	if w <= 0 {
		return fmt.Errorf("bad header")
	}
	v = v[w:]
	for i := uint64(0); i < n; i++ {
		l, w := binary.Uvarint(v)
		if w <= 0 || uint64(len(v)-w) < l {
			return fmt.Errorf("key %d of %d is cut short", i, n)
		}
		if err := fn(v[w : w+int(l)]); err != nil {
			return err
		}
		v = v[w+int(l):]
	}
	if len(v) != 0 {
		return fmt.Errorf("%d bytes after its %d keys", len(v), n)
	}
	return nil
}

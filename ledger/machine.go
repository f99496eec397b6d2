package ledger

import (
	"fmt"
	"math/bits"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/shardledger/shardledger/internal/wire"
	raftv1 "github.com/shardledger/shardledger/proto/gen/ledger/raft/v1"
	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

// Applier applies commands to one overlay. One Applier serves one batch of raft entries:
// the adapter commits its overlay (with the applied index) in a single storage batch.
// Apply is a pure function of (state read through the overlay, command): no clock, no
// randomness, no I/O besides the Reader. Its only errors are storage or corruption
// errors, which must stop the replica; business rejections are results.
type Applier struct {
	ov    *Overlay
	state *raftv1.ShardState
	now   int64 // monotonic time of the command being applied, unix ns
	// events emitted and not yet stored: the events of one raft entry are stored under
	// one key (an EventBatch), when the entry (or a lone Apply) ends.
	events  []*raftv1.Event
	inBatch bool
}

// NewApplier loads the shard state through r and returns an applier.
func NewApplier(r Reader) (*Applier, error) {
	ov := NewOverlay(r)
	st, err := LoadShardState(ov)
	if err != nil {
		return nil, err
	}
	return &Applier{ov: ov, state: st}, nil
}

// LoadShardState reads the shard's bookkeeping record (zero value when new).
func LoadShardState(r Reader) (*raftv1.ShardState, error) {
	st := &raftv1.ShardState{}
	v, ok, err := r.Get(shardStateKey)
	if err != nil {
		return nil, fmt.Errorf("load shard state: %w", err)
	}
	if ok {
		if err := wire.Unmarshal(v, st); err != nil {
			return nil, fmt.Errorf("decode shard state: %w", err)
		}
	}
	return st, nil
}

// Overlay returns the overlay with every write of the batch, shard state included.
func (a *Applier) Overlay() *Overlay {
	a.ov.Set(shardStateKey, mustMarshal(a.state))
	return a.ov
}

// State returns the shard state as of the last applied command.
func (a *Applier) State() *raftv1.ShardState { return a.state }

// ApplyBatch applies every command of a raft entry in order.
func (a *Applier) ApplyBatch(b *raftv1.Batch) (*raftv1.BatchResult, error) {
	out := &raftv1.BatchResult{Results: make([]*raftv1.CommandResult, 0, len(b.GetCommands()))}
	a.inBatch = true
	defer func() { a.inBatch = false }()
	for i, c := range b.GetCommands() {
		r, err := a.Apply(c)
		if err != nil {
			return nil, fmt.Errorf("command %d: %w", i, err)
		}
		out.Results = append(out.Results, r)
	}
	a.storeEvents()
	return out, nil
}

// Apply applies one command.
func (a *Applier) Apply(c *raftv1.Command) (*raftv1.CommandResult, error) {
	last := a.state.LastTimestampUnixNano
	r, err := a.apply(c)
	if err == nil && r.GetRefusal() != raftv1.Refusal_REFUSAL_UNSPECIFIED {
		// A refused command has no effect at all, not even on the clock.
		a.state.LastTimestampUnixNano = last
	}
	if err == nil && !a.inBatch {
		a.storeEvents()
	}
	return r, err
}

func (a *Applier) apply(c *raftv1.Command) (*raftv1.CommandResult, error) {
	// Time only moves through logged entries, and never backwards.
	if c.GetTimestampUnixNano() > a.state.LastTimestampUnixNano {
		a.state.LastTimestampUnixNano = c.GetTimestampUnixNano()
	}
	a.now = a.state.LastTimestampUnixNano

	if as := c.GetAssignSlots(); as != nil {
		return a.assignSlots(as), nil
	}
	if a.state.GetSlotCount() == 0 {
		return &raftv1.CommandResult{Refusal: raftv1.Refusal_REFUSAL_NOT_INITIALIZED,
			Message: "shard owns no slots yet"}, nil
	}
	if r := a.checkSlots(c); r != nil {
		return r, nil
	}
	switch op := c.GetOp().(type) {
	case *raftv1.Command_CreateAccounts:
		return a.createAccounts(op.CreateAccounts)
	case *raftv1.Command_CreateTransfers:
		return a.createTransfers(op.CreateTransfers)
	case *raftv1.Command_Prepare:
		return a.prepare(op.Prepare)
	case *raftv1.Command_Resolve:
		return a.resolve(op.Resolve)
	case *raftv1.Command_ExpirePending:
		return a.expirePending(op.ExpirePending)
	default:
		return &raftv1.CommandResult{Refusal: raftv1.Refusal_REFUSAL_MALFORMED,
			Message: fmt.Sprintf("unknown command %T", op)}, nil
	}
}

func (a *Applier) slot(id string) uint32 { return SlotOf(id, a.state.SlotCount) }

// Owns reports whether the shard owns slot.
func Owns(st *raftv1.ShardState, slot uint32) bool {
	i := int(slot / 8)
	return i < len(st.GetOwned()) && st.GetOwned()[i]&(1<<(slot%8)) != 0
}

// checkSlots refuses the whole command when any account it touches lives in a slot the
// shard does not own: nothing is applied, and the router refreshes its map.
func (a *Applier) checkSlots(c *raftv1.Command) *raftv1.CommandResult {
	var ids []string
	switch op := c.GetOp().(type) {
	case *raftv1.Command_CreateAccounts:
		for _, x := range op.CreateAccounts.GetAccounts() {
			ids = append(ids, x.GetId())
		}
	case *raftv1.Command_CreateTransfers:
		for _, t := range op.CreateTransfers.GetTransfers() {
			ids = append(ids, t.GetDebitAccountId(), t.GetCreditAccountId())
		}
	case *raftv1.Command_Prepare:
		for _, b := range op.Prepare.GetBranches() {
			ids = append(ids, b.GetAccountId())
		}
	case *raftv1.Command_Resolve:
		for _, b := range op.Resolve.GetBranches() {
			ids = append(ids, b.GetAccountId())
		}
	case *raftv1.Command_ExpirePending:
		for _, t := range op.ExpirePending.GetTransfers() {
			ids = append(ids, t.GetDebitAccountId())
		}
	}
	for _, id := range ids {
		if id == "" {
			continue // reported per item (e.g. a post whose accounts come from the pending one)
		}
		if s := a.slot(id); !Owns(a.state, s) {
			return &raftv1.CommandResult{Refusal: raftv1.Refusal_REFUSAL_WRONG_SHARD, Epoch: a.state.Epoch,
				Message: fmt.Sprintf("slot %d of account %q is not owned by this shard (epoch %d)", s, id, a.state.Epoch)}
		}
	}
	return nil
}

func (a *Applier) assignSlots(as *raftv1.AssignSlots) *raftv1.CommandResult {
	if as.GetEpoch() <= a.state.Epoch {
		// Stale or repeated: the shard already knows this epoch or a newer one.
		return &raftv1.CommandResult{Epoch: a.state.Epoch}
	}
	if as.GetSlotCount() == 0 || (a.state.SlotCount != 0 && as.GetSlotCount() != a.state.SlotCount) {
		return &raftv1.CommandResult{Refusal: raftv1.Refusal_REFUSAL_MALFORMED, Epoch: a.state.Epoch,
			Message: fmt.Sprintf("slot count %d does not match the shard's %d", as.GetSlotCount(), a.state.SlotCount)}
	}
	owned := make([]byte, (as.GetSlotCount()+7)/8)
	for _, s := range as.GetSlots() {
		if s >= as.GetSlotCount() {
			return &raftv1.CommandResult{Refusal: raftv1.Refusal_REFUSAL_MALFORMED, Epoch: a.state.Epoch,
				Message: fmt.Sprintf("slot %d out of range", s)}
		}
		owned[s/8] |= 1 << (s % 8)
	}
	a.state.Epoch = as.GetEpoch()
	a.state.SlotCount = as.GetSlotCount()
	a.state.Owned = owned
	a.emit(&raftv1.Event{Kind: raftv1.EventKind_EVENT_KIND_SLOTS_ASSIGNED, Epoch: as.GetEpoch()})
	return &raftv1.CommandResult{Epoch: a.state.Epoch}
}

func (a *Applier) emit(e *raftv1.Event) {
	a.state.EventSeq++
	e.Seq = a.state.EventSeq
	e.TimestampUnixNano = a.now
	a.events = append(a.events, e)
}

// dropEvents forgets the events after sequence number seq (a linked chain rolled back).
func (a *Applier) dropEvents(seq uint64) {
	n := len(a.events)
	for n > 0 && a.events[n-1].Seq > seq {
		n--
	}
	clear(a.events[n:])
	a.events = a.events[:n]
	a.state.EventSeq = seq
}

// storeEvents writes the events not yet stored as one EventBatch under the first one's
// sequence number.
func (a *Applier) storeEvents() {
	if len(a.events) == 0 {
		return
	}
	first := a.events[0].Seq
	for i, e := range a.events {
		if e.Seq != first+uint64(i) {
			panic(fmt.Sprintf("ledger: event %d has seq %d, want %d", i, e.Seq, first+uint64(i)))
		}
	}
	a.ov.Set(eventKey(first), mustMarshal(&raftv1.EventBatch{Events: a.events}))
	a.events = nil
}

func (a *Applier) timestamp() *timestamppb.Timestamp {
	return timestamppb.New(timeFromUnixNano(a.now))
}

// --- accounts ---

func (a *Applier) getAccount(id string) (*ledgerv1.Account, error) {
	v, ok, err := a.ov.Get(accountKey(a.slot(id), id))
	if err != nil || !ok {
		return nil, err
	}
	acc := &ledgerv1.Account{}
	if err := wire.Unmarshal(v, acc); err != nil {
		return nil, fmt.Errorf("decode account %q: %w", id, err)
	}
	return acc, nil
}

func (a *Applier) putAccount(acc *ledgerv1.Account) {
	assertAccount(acc)
	a.ov.Set(accountKey(a.slot(acc.Id), acc.Id), mustMarshal(acc))
}

func (a *Applier) createAccounts(ca *raftv1.CreateAccounts) (*raftv1.CommandResult, error) {
	res := &raftv1.CommandResult{Accounts: make([]*ledgerv1.AccountResult, 0, len(ca.GetAccounts()))}
	for _, in := range ca.GetAccounts() {
		r := &ledgerv1.AccountResult{Id: in.GetId()}
		res.Accounts = append(res.Accounts, r)
		if msg := invalidAccount(in); msg != "" {
			r.Status, r.Message = ledgerv1.AccountStatus_ACCOUNT_STATUS_INVALID, msg
			continue
		}
		old, err := a.getAccount(in.GetId())
		if err != nil {
			return nil, err
		}
		if old != nil {
			if sameAccountFields(old, in) {
				r.Status = ledgerv1.AccountStatus_ACCOUNT_STATUS_EXISTS
			} else {
				r.Status = ledgerv1.AccountStatus_ACCOUNT_STATUS_ID_REUSED
				r.Message = "an account with this id exists with different fields"
			}
			continue
		}
		acc := &ledgerv1.Account{
			Id: in.GetId(), Currency: in.GetCurrency(),
			DebitsMustNotExceedCredits: in.GetDebitsMustNotExceedCredits(),
			CreditsMustNotExceedDebits: in.GetCreditsMustNotExceedDebits(),
			UserData:                   in.GetUserData(),
			CreatedAt:                  a.timestamp(),
		}
		a.putAccount(acc)
		a.emit(&raftv1.Event{Kind: raftv1.EventKind_EVENT_KIND_ACCOUNT_CREATED, Slot: a.slot(acc.Id), Account: acc})
		r.Status = ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED
	}
	return res, nil
}

// invalidAccount returns why an account cannot be created, or "".
func invalidAccount(in *ledgerv1.Account) string {
	if err := ValidateID(in.GetId()); err != nil {
		return "id " + err.Error()
	}
	if err := ValidateCurrency(in.GetCurrency()); err != nil {
		return "currency " + err.Error()
	}
	if err := ValidateUserData(in.GetUserData()); err != nil {
		return "user_data " + err.Error()
	}
	if in.GetDebitsMustNotExceedCredits() && in.GetCreditsMustNotExceedDebits() {
		return "debits_must_not_exceed_credits and credits_must_not_exceed_debits are mutually exclusive"
	}
	if in.GetDebitsPosted() != 0 || in.GetCreditsPosted() != 0 || in.GetDebitsPending() != 0 || in.GetCreditsPending() != 0 {
		return "balances are set by the ledger and must be zero"
	}
	if in.GetCreatedAt() != nil {
		return "created_at is set by the ledger and must be empty"
	}
	return ""
}

func sameAccountFields(a, b *ledgerv1.Account) bool {
	return a.GetCurrency() == b.GetCurrency() &&
		a.GetDebitsMustNotExceedCredits() == b.GetDebitsMustNotExceedCredits() &&
		a.GetCreditsMustNotExceedDebits() == b.GetCreditsMustNotExceedDebits() &&
		a.GetUserData() == b.GetUserData()
}

// assertAccount checks the balance invariants of one account (DESIGN.md section 7).
func assertAccount(acc *ledgerv1.Account) {
	if acc.DebitsMustNotExceedCredits {
		d, c1 := bits.Add64(acc.DebitsPosted, acc.DebitsPending, 0)
		if c1 != 0 || d > acc.CreditsPosted {
			panic(fmt.Sprintf("ledger: invariant broken: account %q debits %d+%d exceed credits %d",
				acc.Id, acc.DebitsPosted, acc.DebitsPending, acc.CreditsPosted))
		}
	}
	if acc.CreditsMustNotExceedDebits {
		c, c1 := bits.Add64(acc.CreditsPosted, acc.CreditsPending, 0)
		if c1 != 0 || c > acc.DebitsPosted {
			panic(fmt.Sprintf("ledger: invariant broken: account %q credits %d+%d exceed debits %d",
				acc.Id, acc.CreditsPosted, acc.CreditsPending, acc.DebitsPosted))
		}
	}
}

func mustMarshal(m proto.Message) []byte {
	b, err := wire.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("ledger: marshal %T: %v", m, err))
	}
	return b
}

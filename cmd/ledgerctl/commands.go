package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/shardledger/shardledger/proto/gen/ledger/v1"
)

func accountCreate(c *cli, fs *flag.FlagSet, args []string) error {
	a := &ledgerv1.Account{}
	fs.StringVar(&a.Id, "id", "", "account id (required)")
	fs.StringVar(&a.Currency, "currency", "", "currency, e.g. EUR (required)")
	fs.BoolVar(&a.DebitsMustNotExceedCredits, "no-overdraft", false, "debits must not exceed credits (a customer account)")
	fs.BoolVar(&a.CreditsMustNotExceedDebits, "credits-limited", false, "credits must not exceed debits")
	fs.StringVar(&a.UserData, "user-data", "", "opaque data (at most 256 bytes)")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if err := required(fs, "id", "currency"); err != nil {
		return err
	}
	ctx, cancel := c.rpcContext()
	defer cancel()
	resp, err := c.ledger().CreateAccounts(ctx, request(c, &ledgerv1.CreateAccountsRequest{Accounts: []*ledgerv1.Account{a}}))
	if err != nil {
		return err
	}
	var rs []result
	for _, r := range resp.Msg.GetResults() {
		st := r.GetStatus()
		rs = append(rs, result{r.GetId(), strings.TrimPrefix(st.String(), "ACCOUNT_STATUS_"), r.GetMessage(),
			st == ledgerv1.AccountStatus_ACCOUNT_STATUS_CREATED || st == ledgerv1.AccountStatus_ACCOUNT_STATUS_EXISTS})
	}
	return c.printResults(resp.Msg, 1, rs)
}

func accountGet(c *cli, fs *flag.FlagSet, args []string) error {
	stale := fs.Bool("stale", false, "allow an answer from any replica (possibly behind the latest write)")
	ids, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return usagef("at least one account id is required")
	}
	req := &ledgerv1.GetAccountsRequest{Ids: ids}
	if *stale {
		req.Consistency = ledgerv1.Consistency_CONSISTENCY_STALE
	}
	ctx, cancel := c.rpcContext()
	defer cancel()
	resp, err := c.ledger().GetAccounts(ctx, request(c, req))
	if err != nil {
		return err
	}
	if c.json {
		if err := c.printJSON(resp.Msg); err != nil {
			return err
		}
	} else {
		w := c.table("ID", "CURRENCY", "BALANCE", "AVAILABLE", "DEBITS_POSTED", "CREDITS_POSTED",
			"DEBITS_PENDING", "CREDITS_PENDING", "FLAGS", "CREATED", "USER_DATA")
		for _, a := range resp.Msg.GetAccounts() {
			var flags []string
			if a.GetDebitsMustNotExceedCredits() {
				flags = append(flags, "no-overdraft")
			}
			if a.GetCreditsMustNotExceedDebits() {
				flags = append(flags, "credits-limited")
			}
			row(w, a.GetId(), a.GetCurrency(),
				diff(a.GetCreditsPosted(), a.GetDebitsPosted()),
				diff(a.GetCreditsPosted(), a.GetDebitsPosted(), a.GetDebitsPending()),
				u64(a.GetDebitsPosted()), u64(a.GetCreditsPosted()), u64(a.GetDebitsPending()), u64(a.GetCreditsPending()),
				text(strings.Join(flags, ",")), timestamp(a.GetCreatedAt()), text(a.GetUserData()))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		printNotFound(c, resp.Msg.GetNotFound())
	}
	if len(resp.Msg.GetNotFound()) > 0 {
		return errItemsFailed
	}
	return nil
}

func transferCreate(c *cli, fs *flag.FlagSet, args []string) error {
	t := &ledgerv1.Transfer{}
	fs.StringVar(&t.Id, "id", "", "transfer id, the idempotency key (required)")
	fs.StringVar(&t.DebitAccountId, "from", "", "debit account id")
	fs.StringVar(&t.CreditAccountId, "to", "", "credit account id")
	fs.Uint64Var(&t.Amount, "amount", 0, "amount in minor units (for --post: 0 posts the full pending amount)")
	fs.StringVar(&t.Currency, "currency", "", "currency, e.g. EUR")
	fs.Var((*uint32Flag)(&t.Code), "code", "reason code")
	fs.StringVar(&t.UserData, "user-data", "", "opaque data (at most 256 bytes)")
	fs.BoolVar(&t.Pending, "pending", false, "two-phase: only reserve the amount")
	fs.Var((*uint32Flag)(&t.TimeoutSeconds), "timeout-seconds", "with --pending: void automatically after this many seconds")
	fs.StringVar(&t.PostPendingId, "post", "", "post (confirm) this pending transfer")
	fs.StringVar(&t.VoidPendingId, "void", "", "void (cancel) this pending transfer")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if err := required(fs, "id"); err != nil {
		return err
	}
	switch {
	case t.PostPendingId != "" && t.VoidPendingId != "":
		return usagef("--post and --void are exclusive")
	case (t.PostPendingId != "" || t.VoidPendingId != "") && t.Pending:
		return usagef("--pending cannot be combined with --post or --void")
	case t.TimeoutSeconds != 0 && !t.Pending:
		return usagef("--timeout-seconds needs --pending")
	case t.PostPendingId == "" && t.VoidPendingId == "":
		if err := required(fs, "from", "to", "amount", "currency"); err != nil {
			return err
		}
	}
	ctx, cancel := c.rpcContext()
	defer cancel()
	resp, err := c.ledger().CreateTransfers(ctx, request(c, &ledgerv1.CreateTransfersRequest{Transfers: []*ledgerv1.Transfer{t}}))
	if err != nil {
		return err
	}
	var rs []result
	for _, r := range resp.Msg.GetResults() {
		st := r.GetStatus()
		rs = append(rs, result{r.GetId(), strings.TrimPrefix(st.String(), "TRANSFER_STATUS_"), r.GetMessage(),
			st == ledgerv1.TransferStatus_TRANSFER_STATUS_CREATED || st == ledgerv1.TransferStatus_TRANSFER_STATUS_EXISTS})
	}
	return c.printResults(resp.Msg, 1, rs)
}

func transferGet(c *cli, fs *flag.FlagSet, args []string) error {
	ids, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return usagef("at least one transfer id is required")
	}
	ctx, cancel := c.rpcContext()
	defer cancel()
	resp, err := c.ledger().GetTransfers(ctx, request(c, &ledgerv1.GetTransfersRequest{Ids: ids}))
	if err != nil {
		return err
	}
	if c.json {
		if err := c.printJSON(resp.Msg); err != nil {
			return err
		}
	} else {
		w := c.table("ID", "DEBIT", "CREDIT", "AMOUNT", "CURRENCY", "CODE", "TYPE", "STATE", "TIMEOUT", "CREATED", "USER_DATA")
		for _, t := range resp.Msg.GetTransfers() {
			kind := "single"
			switch {
			case t.GetPostPendingId() != "":
				kind = "post:" + t.GetPostPendingId()
			case t.GetVoidPendingId() != "":
				kind = "void:" + t.GetVoidPendingId()
			case t.GetPending():
				kind = "pending"
			}
			if t.GetLinked() {
				kind += ",linked"
			}
			state := "-"
			if t.GetState() != ledgerv1.TransferState_TRANSFER_STATE_UNSPECIFIED {
				state = strings.TrimPrefix(t.GetState().String(), "TRANSFER_STATE_")
			}
			timeout := "-"
			if t.GetTimeoutSeconds() > 0 {
				timeout = (time.Duration(t.GetTimeoutSeconds()) * time.Second).String()
			}
			row(w, t.GetId(), text(t.GetDebitAccountId()), text(t.GetCreditAccountId()), u64(t.GetAmount()),
				text(t.GetCurrency()), u64(uint64(t.GetCode())), kind, state, timeout, timestamp(t.GetCreatedAt()), text(t.GetUserData()))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		printNotFound(c, resp.Msg.GetNotFound())
	}
	if len(resp.Msg.GetNotFound()) > 0 {
		return errItemsFailed
	}
	return nil
}

func clusterStatus(c *cli, fs *flag.FlagSet, args []string) error {
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	ctx, cancel := c.rpcContext()
	defer cancel()
	resp, err := c.admin().GetClusterStatus(ctx, request(c, &ledgerv1.GetClusterStatusRequest{}))
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp.Msg)
	}
	fmt.Fprintf(c.stdout, "shard map epoch: %d\n\n", resp.Msg.GetShardMapEpoch())
	w := c.table("NODE", "RAFT_ADDRESS", "ZONE", "REACHABLE")
	for _, n := range resp.Msg.GetNodes() {
		reachable := "no"
		if n.GetReachable() {
			reachable = "yes"
		}
		row(w, u64(n.GetId()), text(n.GetRaftAddress()), text(n.GetZone()), reachable)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout)
	w = c.table("GROUP", "KIND", "LEADER", "TERM", "APPLIED", "SLOTS", "REPLICAS")
	for _, g := range resp.Msg.GetGroups() {
		leader, slots := "-", "-"
		if g.GetLeader() != 0 {
			leader = u64(g.GetLeader())
		}
		if g.GetKind() == ledgerv1.GroupKind_GROUP_KIND_SHARD {
			slots = u64(uint64(g.GetSlotCount()))
		}
		row(w, u64(g.GetId()), strings.ToLower(strings.TrimPrefix(g.GetKind().String(), "GROUP_KIND_")),
			leader, u64(g.GetTerm()), u64(g.GetAppliedIndex()), slots, ids(g.GetReplicas()))
	}
	return w.Flush()
}

func shardMap(c *cli, fs *flag.FlagSet, args []string) error {
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	ctx, cancel := c.rpcContext()
	defer cancel()
	resp, err := c.admin().GetShardMap(ctx, request(c, &ledgerv1.GetShardMapRequest{}))
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp.Msg)
	}
	replicas := map[uint64][]uint64{}
	for _, s := range resp.Msg.GetShards() {
		replicas[s.GetId()] = s.GetReplicas()
	}
	fmt.Fprintf(c.stdout, "epoch: %d\nslots: %d\n\n", resp.Msg.GetEpoch(), resp.Msg.GetSlotCount())
	w := c.table("SLOTS", "COUNT", "SHARD", "REPLICAS")
	for _, r := range resp.Msg.GetRanges() {
		row(w, fmt.Sprintf("%d-%d", r.GetStart(), r.GetEnd()), u64(uint64(r.GetEnd())-uint64(r.GetStart())),
			u64(r.GetShardId()), ids(replicas[r.GetShardId()]))
	}
	return w.Flush()
}

func audit(c *cli, fs *flag.FlagSet, args []string) error {
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	ctx, cancel := c.rpcContext()
	defer cancel()
	resp, err := c.admin().Audit(ctx, request(c, &ledgerv1.AuditRequest{}))
	if err != nil {
		return err
	}
	m := resp.Msg
	failed := !m.GetOk() || len(m.GetViolations()) > 0
	if c.json {
		if err := c.printJSON(m); err != nil {
			return err
		}
	} else {
		switch n := len(m.GetViolations()); {
		case !failed:
			fmt.Fprintln(c.stdout, "audit: ok, no violations")
		case n == 0:
			fmt.Fprintln(c.stdout, "audit: FAILED (no violation reported)")
		default:
			fmt.Fprintf(c.stdout, "audit: FAILED, %d %s\n", n, plural(n, "violation", "violations"))
		}
		for _, v := range m.GetViolations() {
			fmt.Fprintf(c.stdout, "  - %s\n", strings.TrimSpace(v))
		}
		fmt.Fprintln(c.stdout)
		w := c.table("TOTAL", "VALUE")
		for _, t := range []struct {
			name  string
			value uint64
		}{
			{"accounts", m.GetAccounts()},
			{"debits posted", m.GetDebitsPosted()},
			{"credits posted", m.GetCreditsPosted()},
			{"debits pending", m.GetDebitsPending()},
			{"credits pending", m.GetCreditsPending()},
			{"prepared branches", m.GetPreparedBranches()},
			{"pending transfers", m.GetPendingTransfers()},
			{"open transactions", m.GetOpenTransactions()},
		} {
			row(w, t.name, u64(t.value))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(c.stdout, "\nnote: the global sums (debits = credits) are only meaningful at quiescence, when no")
		fmt.Fprintln(c.stdout, "transaction is open or only held two-phase ones are (decision hold in `ledgerctl txn list`).")
		switch open := m.GetOpenTransactions(); open {
		case 0:
			fmt.Fprintln(c.stdout, "No transaction is open now.")
		case 1:
			fmt.Fprintln(c.stdout, "1 transaction is open now: see `ledgerctl txn list`.")
		default:
			fmt.Fprintf(c.stdout, "%d transactions are open now: see `ledgerctl txn list`.\n", open)
		}
	}
	if failed {
		return errItemsFailed
	}
	return nil
}

// listInDoubtMax is the server's default and maximum --limit.
const listInDoubtMax = 1000

// transfersWidth bounds the TRANSFERS column of txn list.
const transfersWidth = 60

func txnList(c *cli, fs *flag.FlagSet, args []string) error {
	var limit uint32
	fs.Var((*uint32Flag)(&limit), "limit", fmt.Sprintf("list at most this many (0: the server's default, %d; it is also the maximum)", listInDoubtMax))
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	ctx, cancel := c.rpcContext()
	defer cancel()
	resp, err := c.admin().ListInDoubtTransactions(ctx, request(c, &ledgerv1.ListInDoubtTransactionsRequest{Limit: limit}))
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp.Msg)
	}
	txns := resp.Msg.GetTransactions()
	if len(txns) == 0 {
		_, err := fmt.Fprintln(c.stdout, "no transactions in doubt")
		return err
	}
	now := c.now()
	w := c.table("ID", "GROUP", "DECISION", "AGE", "EXPIRES", "TRANSFERS")
	for _, t := range txns {
		age := "-"
		if t.GetBegunAt() != nil {
			age = duration(now.Sub(t.GetBegunAt().AsTime()))
		}
		expires := "-"
		if t.GetExpiresAt() != nil {
			if d := t.GetExpiresAt().AsTime().Sub(now); d >= 0 {
				expires = "in " + duration(d)
			} else {
				expires = duration(-d) + " ago"
			}
		}
		row(w, text(t.GetId()), u64(t.GetCoordinatorGroup()), decision(t.GetDecision()), age, expires,
			text(truncateList(t.GetTransferIds(), transfersWidth)))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if effective := min(cmp.Or(limit, listInDoubtMax), listInDoubtMax); len(txns) >= int(effective) {
		fmt.Fprintf(c.stdout, "(limit of %d reached: more transactions may be in doubt)\n", effective)
	}
	return nil
}

// decision names a coordinator's decision as operators say it.
func decision(d ledgerv1.TransactionDecision) string {
	switch d {
	case ledgerv1.TransactionDecision_TRANSACTION_DECISION_UNSPECIFIED:
		return "undecided"
	case ledgerv1.TransactionDecision_TRANSACTION_DECISION_COMMIT:
		return "commit"
	case ledgerv1.TransactionDecision_TRANSACTION_DECISION_ABORT:
		return "abort"
	case ledgerv1.TransactionDecision_TRANSACTION_DECISION_HOLD:
		return "hold"
	}
	return strings.ToLower(strings.TrimPrefix(d.String(), "TRANSACTION_DECISION_")) // a newer value, or its number
}

// duration is a short rendering of an elapsed time: 1.2s, 4m5s, 3h7m, 2d5h.
func duration(d time.Duration) string {
	switch {
	case d < 0:
		d = 0 // clock skew between this host and the coordinator
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return strings.TrimSuffix(d.Truncate(time.Minute).String(), "0s")
	case d >= time.Minute:
		return d.Truncate(time.Second).String()
	}
	return fmt.Sprintf("%.1fs", d.Truncate(100*time.Millisecond).Seconds())
}

// truncateList joins ids with commas in at most width bytes, ending with ",...(+N)" when
// N ids did not fit.
func truncateList(ids []string, width int) string {
	if s := strings.Join(ids, ","); len(s) <= width {
		return s
	}
	var b strings.Builder
	for i, id := range ids {
		sep := ""
		if i > 0 {
			sep = ","
		}
		if b.Len()+len(sep)+len(id)+len(more(len(ids)-i-1)) > width {
			if i == 0 { // the first id does not fit with the ending: cut it, at a rune start
				keep := max(width-len(more(len(ids)-1))-len("..."), 1)
				if keep >= len(id) {
					return id + more(len(ids)-1)
				}
				for keep > 0 && !utf8.RuneStart(id[keep]) {
					keep--
				}
				return id[:keep] + "..." + more(len(ids)-1)
			}
			return b.String() + more(len(ids)-i)
		}
		b.WriteString(sep + id)
	}
	return b.String()
}

// more is the ending of a truncated list whose last n items were left out.
func more(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(",...(+%d)", n)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// result is the outcome of creating one item.
type result struct {
	id, status, message string
	ok                  bool
}

// printResults prints one line per item (or the raw response) and tells whether all
// want items succeeded.
func (c *cli) printResults(m proto.Message, want int, rs []result) error {
	if c.json {
		if err := c.printJSON(m); err != nil {
			return err
		}
	} else {
		w := c.table("ID", "STATUS", "MESSAGE")
		for _, r := range rs {
			row(w, r.id, r.status, r.message)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if len(rs) != want {
		return fmt.Errorf("got %d results for %d items", len(rs), want)
	}
	for _, r := range rs {
		if !r.ok {
			return errItemsFailed
		}
	}
	return nil
}

func printNotFound(c *cli, ids []string) {
	for _, id := range ids {
		fmt.Fprintf(c.stdout, "not found: %s\n", id)
	}
}

// required reports the first of the named flags that was not given.
func required(fs *flag.FlagSet, names ...string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, n := range names {
		if !set[n] {
			return usagef("--%s is required", n)
		}
	}
	return nil
}

// uint32Flag is a flag.Value for uint32 proto fields.
type uint32Flag uint32

func (u *uint32Flag) String() string { return strconv.FormatUint(uint64(*u), 10) }

func (u *uint32Flag) Set(s string) error {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return errors.New("must be an integer in [0, 4294967295]")
	}
	*u = uint32Flag(v)
	return nil
}

// diff is a - b - c... as a signed decimal, without overflow.
func diff(a uint64, bs ...uint64) string {
	n := new(big.Int).SetUint64(a)
	for _, b := range bs {
		n.Sub(n, new(big.Int).SetUint64(b))
	}
	return n.String()
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }

func ids(vs []uint64) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = u64(v)
	}
	return text(strings.Join(s, ","))
}

// text is s for a table cell: "-" when empty, quoted when it would break the layout.
func text(s string) string {
	if s == "" {
		return "-"
	}
	if strings.ContainsAny(s, "\t\n\r\v\f") {
		return strconv.Quote(s)
	}
	return s
}

func timestamp(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().UTC().Format("2006-01-02T15:04:05.000Z")
}

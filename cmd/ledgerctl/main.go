// Command ledgerctl is the command-line client of a Shardledger cluster: it creates and
// reads accounts and transfers (LedgerService) and shows the cluster, its shard map, the
// audit of the double-entry invariants and the cross-shard transactions in doubt
// (AdminService), speaking the Connect protocol with the binary protobuf codec.
//
//	ledgerctl [--addr URL] [--token T] [--timeout 10s] [--json] COMMAND [flags] [args]
//
// Global flags may also follow the command. Exit codes: 0 when every item is CREATED or
// EXISTS (or found), 1 when an item failed or was not found or the audit found
// violations, 2 for usage errors, 3 for RPC errors (the Connect code and message are
// printed to stderr).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/shardledger/shardledger/proto/gen/ledger/v1/ledgerv1connect"
)

const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
	exitRPC    = 3
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is one subcommand; run defines its flags on fs and parses args with parse.
type command struct {
	name     string
	synopsis string
	run      func(c *cli, fs *flag.FlagSet, args []string) error
}

func commandList() []command {
	return []command{
		{"account create", "--id ID --currency CUR [--no-overdraft] [--credits-limited] [--user-data S]", accountCreate},
		{"account get", "[--stale] ID [ID...]", accountGet},
		{"transfer create", "--id ID --from DEBIT --to CREDIT --amount N --currency CUR [--code N] [--user-data S]\n" +
			"                         [--pending [--timeout-seconds N]] | --id ID (--post PENDING_ID [--amount N] | --void PENDING_ID)", transferCreate},
		{"transfer get", "ID [ID...]", transferGet},
		{"cluster status", "", clusterStatus},
		{"shardmap", "", shardMap},
		{"audit", "", audit},
		{"txn list", "[--limit N]", txnList},
		{"in-doubt", "[--limit N]  (same as txn list)", txnList},
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: ledgerctl [--addr URL] [--token T] [--timeout D] [--json] COMMAND [flags] [args]")
	fmt.Fprintln(w, "\ncommands:")
	for _, cmd := range commandList() {
		fmt.Fprintf(w, "  %s\n", strings.TrimSpace(cmd.name+" "+cmd.synopsis))
	}
	fmt.Fprintln(w, "\nglobal flags (also accepted after the command):")
}

// lookup finds the command named by the first one or two words of args.
func lookup(args []string) (command, []string, error) {
	for _, cmd := range commandList() {
		words := strings.Fields(cmd.name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == cmd.name {
			return cmd, args[len(words):], nil
		}
	}
	for _, cmd := range commandList() {
		if group, _, ok := strings.Cut(cmd.name, " "); ok && group == args[0] {
			if len(args) == 1 {
				return command{}, nil, fmt.Errorf("%s: missing subcommand", args[0])
			}
			return command{}, nil, fmt.Errorf("%s: unknown subcommand %q", args[0], args[1])
		}
	}
	return command{}, nil, fmt.Errorf("unknown command %q", args[0])
}

// cli holds the global options and the output streams.
type cli struct {
	ctx            context.Context
	stdout, stderr io.Writer
	addr, token    string
	timeout        time.Duration
	json           bool
	now            func() time.Time // the clock of AGE and EXPIRES
}

func (c *cli) globalFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", c.addr, "server URL (env LEDGER_ADDR)")
	fs.StringVar(&c.token, "token", c.token, "bearer token sent as Authorization (env LEDGER_TOKEN)")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "deadline of the RPC (0: none)")
	fs.BoolVar(&c.json, "json", c.json, "print the raw response as protojson")
}

// run is the whole program; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runAt(ctx, time.Now, args, stdout, stderr)
}

// runAt is run with a given clock (tests fix it).
func runAt(ctx context.Context, now func() time.Time, args []string, stdout, stderr io.Writer) int {
	c := &cli{ctx: ctx, stdout: stdout, stderr: stderr, addr: "http://localhost:8080", timeout: 10 * time.Second, now: now}
	if v := os.Getenv("LEDGER_ADDR"); v != "" {
		c.addr = v
	}
	c.token = os.Getenv("LEDGER_TOKEN")

	fs := flag.NewFlagSet("ledgerctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { printUsage(stderr); fs.PrintDefaults() }
	c.globalFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return exitUsage
	}
	if rest[0] == "help" {
		fs.SetOutput(stdout)
		printUsage(stdout)
		fs.PrintDefaults()
		return exitOK
	}
	cmd, rest, err := lookup(rest)
	if err != nil {
		fmt.Fprintf(stderr, "ledgerctl: %v\n", err)
		fs.Usage()
		return exitUsage
	}

	sub := flag.NewFlagSet("ledgerctl "+cmd.name, flag.ContinueOnError)
	sub.SetOutput(stderr)
	sub.Usage = func() {
		fmt.Fprintf(stderr, "usage: ledgerctl %s\n\nflags:\n", strings.TrimSpace(cmd.name+" "+cmd.synopsis))
		sub.PrintDefaults()
	}
	c.globalFlags(sub)
	return c.exitCode(sub, cmd.run(c, sub, rest))
}

var (
	// errItemsFailed: the call worked but an item was refused or not found (exit 1).
	errItemsFailed = errors.New("some items failed")
	// errFlagParse: the flag package has already reported the problem (exit 2).
	errFlagParse = errors.New("bad flags")
)

type usageError string

func (e usageError) Error() string { return string(e) }

func usagef(format string, args ...any) error { return usageError(fmt.Sprintf(format, args...)) }

func (c *cli) exitCode(fs *flag.FlagSet, err error) int {
	var uerr usageError
	var cerr *connect.Error
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errItemsFailed):
		return exitFailed
	case errors.Is(err, errFlagParse):
		return exitUsage
	case errors.As(err, &uerr):
		fmt.Fprintf(c.stderr, "ledgerctl %s: %s\n", strings.TrimPrefix(fs.Name(), "ledgerctl "), uerr)
		fs.Usage()
		return exitUsage
	case errors.As(err, &cerr):
		fmt.Fprintf(c.stderr, "ledgerctl: rpc error: %s: %s\n", cerr.Code(), cerr.Message())
		for _, d := range cerr.Details() {
			v, err := d.Value()
			if br, ok := v.(*errdetails.BadRequest); ok && err == nil {
				for _, fv := range br.GetFieldViolations() {
					fmt.Fprintf(c.stderr, "  %s: %s\n", fv.GetField(), fv.GetDescription())
				}
			} else if err == nil {
				fmt.Fprintf(c.stderr, "  %s: %s\n", d.Type(), protojson.Format(v))
			}
		}
		return exitRPC
	default:
		fmt.Fprintf(c.stderr, "ledgerctl: %v\n", err)
		return exitFailed
	}
}

// parse parses flags and positional arguments in any order; "--" ends the flags.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errFlagParse
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// parseNoArgs parses flags of a command that takes no positional arguments.
func parseNoArgs(fs *flag.FlagSet, args []string) error {
	pos, err := parse(fs, args)
	if err == nil && len(pos) > 0 {
		err = usagef("unexpected argument %q", pos[0])
	}
	return err
}

func (c *cli) baseURL() string {
	if !strings.Contains(c.addr, "://") {
		return "http://" + c.addr
	}
	return c.addr
}

func (c *cli) ledger() ledgerv1connect.LedgerServiceClient {
	return ledgerv1connect.NewLedgerServiceClient(&http.Client{}, c.baseURL())
}

func (c *cli) admin() ledgerv1connect.AdminServiceClient {
	return ledgerv1connect.NewAdminServiceClient(&http.Client{}, c.baseURL())
}

// rpcContext bounds one call by --timeout.
func (c *cli) rpcContext() (context.Context, context.CancelFunc) {
	if c.timeout <= 0 {
		return context.WithCancel(c.ctx)
	}
	return context.WithTimeout(c.ctx, c.timeout)
}

// request wraps msg, adding the bearer token when there is one.
func request[T any](c *cli, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if c.token != "" {
		r.Header().Set("Authorization", "Bearer "+c.token)
	}
	return r
}

func (c *cli) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "%s\n", b)
	return err
}

// table is a tabwriter on stdout; call Flush when done.
func (c *cli) table(header ...string) *tabwriter.Writer {
	w := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	row(w, header...)
	return w
}

func row(w io.Writer, cols ...string) {
	fmt.Fprintln(w, strings.Join(cols, "\t"))
}

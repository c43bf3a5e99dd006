// Package cli is the edgewire command line, the operator's tool: the
// local agent's status over its local API (node/localapi), and join tokens,
// nodes and routes over the coordinator's Admin service. cmd/edgewire is
// only its main; the package exists so that the commands can run in
// process against fake servers in tests. It links neither the coordinator
// nor the data plane.
package cli

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/internal/buildinfo"
	"github.com/edgewire/edgewire/node/localapi"
	"github.com/edgewire/edgewire/types/jointoken"
)

// Exit statuses of the CLI (README, "CLI"): a script can tell a command
// it got wrong from one that failed.
const (
	exitOK    = 0 // done
	exitError = 1 // the command failed: a server refused, a peer did not answer, nothing to reach
	exitUsage = 2 // the command line is wrong: unknown command or flag, bad value, wrong arguments
)

// Main runs the CLI with args (without the program name), writing
// results to stdout and errors to stderr, and returns the exit status:
// exitOK, exitError or exitUsage.
func Main(args []string, stdout, stderr io.Writer) int {
	return run(args, stdout, stderr, time.Now)
}

// run is Main with the clock that ages and token expiry are read against.
func run(args []string, stdout, stderr io.Writer, now func() time.Time) int {
	return runBuild(args, stdout, stderr, now, buildinfo.Get())
}

// runBuild is run with the build `version` reports.
func runBuild(args []string, stdout, stderr io.Writer, now func() time.Time, build buildinfo.Info) int {
	root := newRoot(&globals{now: now, build: build})
	// Never nil: cobra reads os.Args when it is.
	root.SetArgs(append([]string{}, args...))
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(stderr, "edgewire:", err)
		var u usageError
		if errors.As(err, &u) {
			return exitUsage
		}
		return exitError
	}
	return exitOK
}

// usageError is a command line the CLI cannot run (exitUsage).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// args makes the arguments check v's refusals usage errors.
func args(v cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := v(cmd, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// noArgs refuses arguments to a command that takes none: what cobra
// would read as a subcommand of a leaf.
func noArgs(cmd *cobra.Command, a []string) error {
	if len(a) > 0 {
		return usagef("unknown command %q for %q (it takes no arguments)", a[0], cmd.CommandPath())
	}
	return nil
}

// group makes cmd a command that only groups subcommands: run alone it
// prints its help; with anything else than a subcommand it is a usage
// error naming the closest subcommands (cobra would print the help and
// exit 0 for a mistyped one, which a script takes for success).
func group(cmd *cobra.Command, subs ...*cobra.Command) *cobra.Command {
	cmd.AddCommand(subs...)
	cmd.SuggestionsMinimumDistance = 2
	cmd.Args = func(cmd *cobra.Command, a []string) error {
		if len(a) == 0 {
			return nil
		}
		if s := cmd.SuggestionsFor(a[0]); len(s) > 0 {
			return usagef("unknown command %q for %q (did you mean %s?)", a[0], cmd.CommandPath(), strings.Join(s, " or "))
		}
		return usagef("unknown command %q for %q (see %s --help)", a[0], cmd.CommandPath(), cmd.CommandPath())
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	return cmd
}

// globals are the flags every command shares, and the clock.
type globals struct {
	output         string
	agentSocket    string
	adminSocket    string
	coordinator    string
	adminTokenFile string
	caFile         string
	serverName     string

	now   func() time.Time // for ages and token expiry
	build buildinfo.Info   // what `version` reports
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "edgewire",
		Short: "Operate an edgewire overlay",
		Long: `Operate an edgewire overlay: this node's agent (status, services, ping,
netcheck) and the coordinator (token, nodes, graph).

Every command prints a table or, with -o json, JSON with stable snake_case
fields that are always present. Exit status: 0 done, 1 the command failed,
2 the command line is wrong.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if g.output != "table" && g.output != "json" {
				return usagef("--output %q: want table or json", g.output)
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVarP(&g.output, "output", "o", "table", "table or json")
	pf.StringVar(&g.agentSocket, "socket", localapi.DefaultSocket, "agent local API socket")
	pf.StringVar(&g.adminSocket, "admin-socket", filepath.Join(api.DefaultCoordinatorDataDir, api.AdminSocketName), "coordinator admin socket (on the coordinator host)")
	pf.StringVar(&g.coordinator, "coordinator", "", "reach the coordinator over TLS at host:port instead of the admin socket (needs --admin-token-file and --ca-file)")
	pf.StringVar(&g.adminTokenFile, "admin-token-file", "", "file holding the coordinator's admin token (<data-dir>/admin.token)")
	pf.StringVar(&g.caFile, "ca-file", "", "coordinator CA certificate (<data-dir>/pki/ca.crt)")
	pf.StringVar(&g.serverName, "coordinator-server-name", jointoken.ServerName, "TLS name of the coordinator")

	group(root, statusCmd(g), servicesCmd(g), pingCmd(g), netcheckCmd(g), tokenCmd(g), nodesCmd(g), graphCmd(g), versionCmd(g))
	buildinfo.SetVersion(root, "edgewire")
	return root
}

// admin connects to the coordinator's Admin service and returns a client,
// a context for one call (15 s) and a function that ends both.
func (g *globals) admin() (api.AdminClient, context.Context, func(), error) {
	var conn *grpc.ClientConn
	var err error
	if g.coordinator == "" {
		if _, serr := os.Stat(g.adminSocket); serr != nil {
			return nil, nil, nil, fmt.Errorf("no coordinator admin socket at %s (run on the coordinator host, pass --admin-socket, or use --coordinator with --admin-token-file)", g.adminSocket)
		}
		conn, err = grpc.NewClient("unix://"+g.adminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		if g.adminTokenFile == "" || g.caFile == "" {
			return nil, nil, nil, errors.New("--coordinator needs --admin-token-file and --ca-file")
		}
		tok, rerr := os.ReadFile(g.adminTokenFile)
		if rerr != nil {
			return nil, nil, nil, rerr
		}
		caPEM, rerr := os.ReadFile(g.caFile)
		if rerr != nil {
			return nil, nil, nil, rerr
		}
		var tc *tls.Config
		if tc, err = jointoken.ClientConfig(caPEM, g.serverName); err != nil {
			return nil, nil, nil, fmt.Errorf("--ca-file: %w", err)
		}
		conn, err = grpc.NewClient(g.coordinator, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
			grpc.WithPerRPCCredentials(bearer(strings.TrimSpace(string(tok)))))
	}
	if err != nil {
		return nil, nil, nil, err
	}
	c, cancel := callContext()
	return api.NewAdminClient(conn), c, func() { cancel(); conn.Close() }, nil
}

// bearer sends the admin token with every call, over TLS only.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// rpcErr reduces a gRPC error to the server's message.
func rpcErr(err error) error {
	if s, ok := status.FromError(err); ok {
		return errors.New(s.Message())
	}
	return err
}

// callContext bounds one call to the agent or the coordinator.
func callContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 15*time.Second)
}

// versionCmd is `edgewire version`: buildinfo's one line, or its Info
// with -o json, like every other command's output.
func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of edgewire",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.output == "json" {
				return printJSON(cmd.OutOrStdout(), g.build)
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "edgewire", g.build)
			return err
		},
	}
}

// printJSON prints v as indented JSON, with every nil slice or map in it
// printed as [] or {}: a list is a list even when empty, so a consumer
// never has to tell null from []. Absent objects (nil pointers) stay null.
func printJSON(w io.Writer, v any) error {
	rv := reflect.ValueOf(v)
	if rv.IsValid() {
		c := reflect.New(rv.Type()).Elem()
		c.Set(rv)
		fillNil(c)
		v = c.Interface()
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// fillNil sets the nil slices and maps reachable from v (through struct
// fields, pointers and slice elements) to empty ones.
func fillNil(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			fillNil(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fillNil(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.IsNil() {
			if v.CanSet() {
				v.Set(reflect.MakeSlice(v.Type(), 0, 0))
			}
			return
		}
		for i := range v.Len() {
			fillNil(v.Index(i))
		}
	case reflect.Map:
		if v.IsNil() && v.CanSet() {
			v.Set(reflect.MakeMap(v.Type()))
		}
	}
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

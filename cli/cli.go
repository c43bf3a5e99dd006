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

// Main runs the CLI with args (without the program name), writing
// results to stdout and errors to stderr, and returns the exit status:
// 0, or 1 after any error.
func Main(args []string, stdout, stderr io.Writer) int {
	return run(args, stdout, stderr, time.Now)
}

// run is Main with the clock that ages and token expiry are read against.
func run(args []string, stdout, stderr io.Writer, now func() time.Time) int {
	root := newRoot(&globals{now: now})
	// Never nil: cobra reads os.Args when it is.
	root.SetArgs(append([]string{}, args...))
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(stderr, "edgewire:", err)
		return 1
	}
	return 0
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

	now func() time.Time // for ages and token expiry
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "edgewire",
		Short:         "Operate an edgewire overlay",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if g.output != "table" && g.output != "json" {
				return fmt.Errorf("--output %q: want table or json", g.output)
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&g.output, "output", "o", "table", "table or json")
	pf.StringVar(&g.agentSocket, "socket", localapi.DefaultSocket, "agent local API socket")
	pf.StringVar(&g.adminSocket, "admin-socket", filepath.Join(api.DefaultCoordinatorDataDir, api.AdminSocketName), "coordinator admin socket (on the coordinator host)")
	pf.StringVar(&g.coordinator, "coordinator", "", "reach the coordinator over TLS at host:port instead of the admin socket (needs --admin-token-file and --ca-file)")
	pf.StringVar(&g.adminTokenFile, "admin-token-file", "", "file holding the coordinator's admin token (<data-dir>/admin.token)")
	pf.StringVar(&g.caFile, "ca-file", "", "coordinator CA certificate (<data-dir>/pki/ca.crt)")
	pf.StringVar(&g.serverName, "coordinator-server-name", jointoken.ServerName, "TLS name of the coordinator")

	root.AddCommand(statusCmd(g), servicesCmd(g), pingCmd(g), netcheckCmd(g), tokenCmd(g), nodesCmd(g), buildinfo.Command("edgewire"))
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

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
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

// Package kube runs a real kube-apiserver backed by a real etcd for
// edgewire's tests, so the Kubernetes backend is tested against the real API
// machinery (validation, RBAC, server-side dry-run, resourceVersion
// conflicts, watches) instead of a fake.
//
// The binaries are built from the Go module proxy by hack/kube/build.sh into
// .cache/kube/bin (once; 10-15 minutes on 2 cores). Start runs them on
// loopback, or inside a lab namespace through a caller's Runner, with a
// static admin token. The package uses only the standard library: callers
// bring client-go and point it at Cluster.Kubeconfig.
package kube

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// binDirEnv overrides where the binaries are built and looked up.
	binDirEnv = "EDGEWIRE_KUBE_BIN"
	// ServiceCIDR is the API server's --service-cluster-ip-range.
	ServiceCIDR = "10.96.0.0/16"

	defaultReadyTimeout = 90 * time.Second
	stopTimeout         = 10 * time.Second
	logTail             = 40 // lines of a process log shown when startup fails
)

// Binaries returns the paths of the cached kube-apiserver and etcd, running
// hack/kube/build.sh first (a no-op when the cache matches the pinned
// versions). When the build fails the test fails under CI=true and is
// skipped otherwise.
func Binaries(t testing.TB) (apiserver, etcd string) {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		unavailable(t, err)
	}
	dir := os.Getenv(binDirEnv)
	if dir == "" {
		dir = filepath.Join(root, ".cache", "kube", "bin")
	}
	apiserver, etcd = filepath.Join(dir, "kube-apiserver"), filepath.Join(dir, "etcd")
	if _, err := os.Stat(filepath.Join(dir, "stamp")); err != nil {
		t.Logf("building kube-apiserver and etcd into %s; the first build takes 10-15 minutes (hack/kube/build.sh does it ahead of time)", dir)
	}
	script := filepath.Join(root, "hack", "kube", "build.sh")
	cmd := exec.Command(script)
	cmd.Env = append(os.Environ(), binDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	if len(out) > 0 {
		t.Logf("%s: %s", script, strings.TrimSpace(string(out)))
	}
	if err != nil {
		unavailable(t, fmt.Errorf("%s: %w\n%s", script, err, tail(out, logTail)))
	}
	return apiserver, etcd
}

// unavailable fails the test under CI=true, where every prerequisite must be
// present, and skips it elsewhere.
func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("kube-apiserver and etcd unavailable: %v", err)
	}
	t.Skipf("kube-apiserver and etcd unavailable: %v", err)
}

// repoRoot walks up from the working directory (a package directory under
// go test) to the directory holding hack/kube/build.sh.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "hack", "kube", "build.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("hack/kube/build.sh not found above the working directory")
		}
		dir = parent
	}
}

// Runner starts a long-lived process named name and returns a function that
// stops it and waits for it to exit, as lab.Process.Stop does. Start passes
// argv wrapped in a /bin/sh that writes the output to a log file under the
// cluster's directory, forwards SIGTERM and SIGINT to the real process and
// exits after it.
type Runner func(name string, argv ...string) (stop func(), err error)

// Config describes where a cluster runs. Only Dir is required.
type Config struct {
	// Dir holds etcd's data, certificates, the token file, the kubeconfig
	// and the process logs (etcd.log, kube-apiserver.log).
	Dir string
	// Run starts the processes; nil runs them on the host.
	Run Runner
	// Addr is the address the API server listens on, advertises and has in
	// its serving certificate; default 127.0.0.1. Inside a lab namespace use
	// the host's IP. etcd always listens on 127.0.0.1 beside the API server.
	Addr netip.Addr
	// DialContext reaches Addr (and 127.0.0.1 where the processes run) from
	// the test process; default a net.Dialer. Inside a lab namespace, wrap
	// the host's DialTCP.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// ReadyTimeout bounds the wait for etcd and then for the API server's
	// /readyz; default 90 s.
	ReadyTimeout time.Duration
}

// Cluster is a running etcd and kube-apiserver. Its fields are what a
// client needs; Start stops the processes through t.Cleanup.
type Cluster struct {
	URL        string // https://ADDR:PORT
	Token      string // bearer token of "admin", in group system:masters
	CAFile     string // PEM CA that signed the serving certificate
	Kubeconfig string // kubeconfig with URL, CAFile and Token

	transport *http.Transport
}

// Start runs etcd and kube-apiserver on loopback ports with processes
// started by run (nil: on the host), state under dir, and waits until
// /readyz answers ok.
func Start(t testing.TB, dir string, run func(name string, argv ...string) (stop func(), err error)) *Cluster {
	t.Helper()
	return StartConfig(t, Config{Dir: dir, Run: run})
}

// StartConfig is Start with the options of Config.
func StartConfig(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	if cfg.Dir == "" {
		t.Fatal("kube: Config.Dir is required")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		t.Fatalf("kube: %v", err)
	}
	if cfg.Run == nil {
		cfg.Run = hostRun
	}
	if !cfg.Addr.IsValid() {
		cfg.Addr = netip.MustParseAddr("127.0.0.1")
	}
	if cfg.DialContext == nil {
		cfg.DialContext = (&net.Dialer{}).DialContext
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = defaultReadyTimeout
	}
	apiserverBin, etcdBin := Binaries(t)

	p, err := writePKI(filepath.Join(dir, "pki"), cfg.Addr, time.Now())
	if err != nil {
		t.Fatalf("kube: %v", err)
	}
	token, err := randomHex(16)
	if err != nil {
		t.Fatalf("kube: %v", err)
	}
	tokenFile := filepath.Join(dir, "tokens.csv")
	// token,user,uid,"groups"
	if err := os.WriteFile(tokenFile, []byte(token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		t.Fatalf("kube: %v", err)
	}
	ports, err := freePorts(3)
	if err != nil {
		t.Fatalf("kube: %v", err)
	}
	etcdClient := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	etcdPeer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	apiHostPort := net.JoinHostPort(cfg.Addr.String(), strconv.Itoa(ports[2]))

	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	tr := &http.Transport{
		DialContext:       cfg.DialContext,
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	c := &Cluster{
		URL:        "https://" + apiHostPort,
		Token:      token,
		CAFile:     p.caFile,
		Kubeconfig: filepath.Join(dir, "kubeconfig"),
		transport:  tr,
	}

	etcd := process{name: "etcd", dir: dir}
	etcd.start(t, cfg.Run, etcdBin,
		"--name=edgewire-test",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdClient,
		"--advertise-client-urls="+etcdClient,
		"--listen-peer-urls="+etcdPeer,
		"--initial-advertise-peer-urls="+etcdPeer,
		"--initial-cluster=edgewire-test="+etcdPeer,
		"--unsafe-no-fsync", // throwaway data; fsync dominates on a busy disk
		"--log-level=warn",
	)
	deadline := time.Now().Add(cfg.ReadyTimeout)
	plain := &http.Client{Transport: &http.Transport{DialContext: cfg.DialContext}, Timeout: 5 * time.Second}
	defer plain.CloseIdleConnections()
	if err := waitFor(deadline, &etcd, func() error {
		return probe(plain, etcdClient+"/health", "", `"health":"true"`)
	}); err != nil {
		t.Fatalf("kube: etcd not healthy: %v\n%s", err, etcd.tail())
	}

	args := []string{
		"--etcd-servers=" + etcdClient,
		"--bind-address=" + cfg.Addr.String(),
		"--advertise-address=" + cfg.Addr.String(),
		"--secure-port=" + strconv.Itoa(ports[2]),
		"--cert-dir=" + filepath.Join(dir, "pki"),
		"--tls-cert-file=" + p.certFile,
		"--tls-private-key-file=" + p.keyFile,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saPubFile,
		"--service-account-signing-key-file=" + p.saKeyFile,
		// Charts under test run privileged DaemonSets (NET_ADMIN, host network).
		"--allow-privileged=true",
		"--profiling=false",
	}
	if cfg.Addr.IsLoopback() {
		// The endpoint reconciler refuses to publish a loopback address as
		// the kubernetes Service's endpoint.
		args = append(args, "--endpoint-reconciler-type=none")
	}
	api := process{name: "kube-apiserver", dir: dir}
	api.start(t, cfg.Run, append([]string{apiserverBin}, args...)...)
	deadline = time.Now().Add(cfg.ReadyTimeout)
	authed := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	if err := waitFor(deadline, &api, func() error {
		return probe(authed, c.URL+"/readyz", token, "ok")
	}); err != nil {
		t.Fatalf("kube: kube-apiserver not ready: %v\n%s\n%s", err, api.tail(), etcd.tail())
	}
	if err := os.WriteFile(c.Kubeconfig, kubeconfig(c), 0o600); err != nil {
		t.Fatalf("kube: %v", err)
	}
	return c
}

// HTTPClient returns a client that trusts the cluster's CA and sends its
// admin token. Its idle connections are closed when the test ends.
func (c *Cluster) HTTPClient() *http.Client {
	return &http.Client{Transport: bearer{token: c.Token, next: c.transport}, Timeout: 30 * time.Second}
}

// bearer adds an Authorization header to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// process is one of the cluster's processes, wrapped so its output lands in
// <dir>/<name>.log and its exit status in <dir>/<name>.exit whatever the
// Runner does with its own output.
type process struct {
	name string
	dir  string
}

func (p *process) logPath() string  { return filepath.Join(p.dir, p.name+".log") }
func (p *process) exitPath() string { return filepath.Join(p.dir, p.name+".exit") }

func (p *process) start(t testing.TB, run Runner, argv ...string) {
	t.Helper()
	// The shell outlives its child so stop waits for the real process, and
	// passes SIGTERM/SIGINT on, so signalling the group or the shell alone
	// both work.
	const wrap = `log=$1 status=$2; shift 2
trap 'kill -TERM $pid 2>/dev/null' TERM INT
"$@" >>"$log" 2>&1 &
pid=$!
wait $pid; rc=$?
while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done
echo $rc >"$status"`
	stop, err := run(p.name, append([]string{"/bin/sh", "-c", wrap, "sh", p.logPath(), p.exitPath()}, argv...)...)
	if err != nil {
		t.Fatalf("kube: start %s: %v", p.name, err)
	}
	t.Cleanup(stop)
}

// exited returns an error once the process has exited.
func (p *process) exited() error {
	b, err := os.ReadFile(p.exitPath())
	if err != nil {
		return nil
	}
	return fmt.Errorf("%s exited with status %s", p.name, strings.TrimSpace(string(b)))
}

// tail returns the end of the process log, labelled for a failure message.
func (p *process) tail() string {
	b, err := os.ReadFile(p.logPath())
	if err != nil {
		return fmt.Sprintf("--- %s: %v", p.logPath(), err)
	}
	return fmt.Sprintf("--- last lines of %s:\n%s", p.logPath(), tail(b, logTail))
}

// waitFor polls ready until it succeeds, the process exits or deadline passes.
func waitFor(deadline time.Time, p *process, ready func() error) error {
	for {
		if err := p.exited(); err != nil {
			return err
		}
		err := ready()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up: %w", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// probe GETs url and wants 200 with a body containing want.
func probe(c *http.Client, url, token, want string) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago. The processes bind them soon after; a rare clash shows as a startup
// failure with the reason in the log.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		defer l.Close() // held until all are picked, so none repeats
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func kubeconfig(c *Cluster) []byte {
	// Double-quoted YAML scalars accept Go's quoting of these strings.
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: edgewire-test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: edgewire-test
  context:
    cluster: edgewire-test
    user: admin
current-context: edgewire-test
`, strconv.Quote(c.URL), strconv.Quote(c.CAFile), strconv.Quote(c.Token))
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

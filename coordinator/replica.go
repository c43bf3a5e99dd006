package coordinator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/edgewire/edgewire/coordinator/lease"
	"github.com/edgewire/edgewire/coordinator/store/kubestore"
	"github.com/edgewire/edgewire/internal/atomicfile"
	"github.com/edgewire/edgewire/internal/rungroup"
	"github.com/edgewire/edgewire/internal/telemetry"
)

// Replication configures a coordinator replica (--store kubernetes): the
// state lives in the Kubernetes API, the replica holding the Lease serves
// agents and admins, the others wait, not ready and not listening, to
// take over. Why active-passive: docs/architecture.md.
type Replication struct {
	Kube          *rest.Config
	Namespace     string
	Identity      string        // this replica's, unique (its pod name)
	LeaseName     string        // the Lease; the Secret of shared keys is named after it
	LeaseDuration time.Duration // 0: lease.DefaultDuration
}

// sharedFiles are the data dir's files every replica must have the same
// of, kept in one Secret: the CA (what join tokens pin), the relay ticket
// and relay keys, and the admin token.
var sharedFiles = []struct {
	key, path string
	mode      os.FileMode
}{
	{"ca.crt", "pki/ca.crt", 0o644},
	{"ca.key", "pki/ca.key", 0o600},
	{"ticket.key", TicketKeyFile, 0o600},
	{"ticket.key.pub", TicketKeyFile + ".pub", 0o644},
	{"relay.key", RelayKeyFile, 0o600},
	{"admin.token", AdminTokenFile, 0o600},
}

// runReplica runs the coordinator as one replica of several.
func runReplica(ctx context.Context, cfg Config) error {
	r := cfg.Replication
	log := cfg.Logger
	kc := storeClientConfig(r.Kube)
	cs, err := kubernetes.NewForConfig(kc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(kc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	if err := syncSecrets(ctx, cfg, cs); err != nil {
		return err
	}
	el, err := lease.New(lease.Config{Client: cs, Namespace: r.Namespace, Name: r.LeaseName, Identity: r.Identity,
		Duration: r.LeaseDuration, Logger: log.With("src", "lease")})
	if err != nil {
		return err
	}
	base := telemetry.NewRegistry()
	registerReplicaMetrics(base, el)
	// A term's registry is set while its servers run: readiness reads it.
	var term termGatherer
	ready := readiness(el, term.serving)
	telemetry.ReadyGauge(base, readyMetric, readyHelp, ready)
	views := &topologyViews{}
	page, err := topologyPage(cfg, views) // after syncSecrets: the shared admin token
	if err != nil {
		return err
	}
	g, ctx := rungroup.New(ctx)
	if cfg.MetricsListen != "" {
		g.Go("metrics", func(ctx context.Context) error {
			return telemetry.Serve(ctx, cfg.MetricsListen, prometheus.Gatherers{base, &term}, ready, log, page...)
		})
	}
	g.Go("election", func(ctx context.Context) error {
		return el.Run(ctx, func(ctx context.Context) error {
			t0 := time.Now()
			st, err := kubestore.Open(ctx, kubestore.Config{Client: dyn, Namespace: r.Namespace, Logger: log.With("src", "store")})
			if err != nil {
				return err
			}
			log.Info("store loaded", "took", time.Since(t0).Round(time.Millisecond))
			reg := prometheus.NewRegistry()
			telemetry.CounterFunc(reg, "edgewire_coordinator_store_objects_rejected_total",
				"Stored objects ignored because they do not decode (edited by hand into nonsense).", func() float64 { return float64(st.Rejected()) })
			term.set(reg)
			defer term.set(nil)
			return serve(ctx, cfg, st, reg, term.listening, views)
		})
	})
	log.Info("coordinator replica started", "identity", r.Identity, "namespace", r.Namespace, "lease", r.LeaseName)
	return g.Wait()
}

// storeClientConfig is the store's client configuration: client-go's
// default client-side limit (5 requests/s) would hold a burst of joins
// (about six calls each) to one a second.
func storeClientConfig(rc *rest.Config) *rest.Config {
	rc = rest.CopyConfig(rc)
	if rc.QPS == 0 {
		rc.QPS, rc.Burst = 500, 1000
	}
	return rc
}

// readiness: a replica is ready while it leads and serves; a leader that
// lost the API server is ready but degraded.
func readiness(el *lease.Elector, serving func() bool) telemetry.Ready {
	return func() error {
		st := el.Status()
		switch {
		case !st.Leading:
			return fmt.Errorf("standby replica; the leader is %q", st.Holder)
		case !serving():
			return errors.New("leader, starting")
		case !st.Unreachable.IsZero():
			return &telemetry.Degraded{Reason: fmt.Sprintf("Kubernetes API server unreachable since %s: serving the streams held, refusing joins and deletes",
				st.Unreachable.UTC().Format(time.RFC3339))}
		}
		return nil
	}
}

func registerReplicaMetrics(reg prometheus.Registerer, el *lease.Elector) {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	telemetry.GaugeFunc(reg, "edgewire_coordinator_leader", "1 while this replica holds the lease and serves.", func() float64 { return b(el.Status().Leading) })
	telemetry.GaugeFunc(reg, "edgewire_coordinator_kubernetes_api_reachable", "0 while the Kubernetes API server does not answer.", func() float64 { return b(el.Status().Unreachable.IsZero()) })
	telemetry.GaugeFunc(reg, "edgewire_coordinator_lease_transitions", "Times the lease changed hands, as last read.", func() float64 { return float64(el.Status().Transitions) })
}

// termGatherer gathers the current leadership term's registry (none
// while standing by).
type termGatherer struct {
	mu        sync.Mutex
	reg       *prometheus.Registry
	accepting bool // the term serves agents (serve's serving callback)
}

func (t *termGatherer) set(r *prometheus.Registry) {
	t.mu.Lock()
	t.reg, t.accepting = r, false
	t.mu.Unlock()
}

// listening notes that the term serves agents.
func (t *termGatherer) listening() {
	t.mu.Lock()
	t.accepting = t.reg != nil
	t.mu.Unlock()
}

// serving reports whether a leadership term runs and serves agents: it
// loads the store, the saved presence and the Service source first.
func (t *termGatherer) serving() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reg != nil && t.accepting
}

func (t *termGatherer) Gather() ([]*dto.MetricFamily, error) {
	t.mu.Lock()
	r := t.reg
	t.mu.Unlock()
	if r == nil {
		return nil, nil
	}
	return r.Gather()
}

// secretName is the Secret holding the shared files.
func secretName(r *Replication) string { return r.LeaseName + "-keys" }

// syncSecrets makes the data dir's shared files those of the Secret: the
// first replica ever creates them (as a lone coordinator does) and the
// Secret from them; every other replica, and every later start, takes
// them from the Secret. Two first replicas racing agree on whichever
// Secret was created first.
func syncSecrets(ctx context.Context, cfg Config, cs kubernetes.Interface) error {
	r := cfg.Replication
	secrets := cs.CoreV1().Secrets(r.Namespace)
	name := secretName(r)
	for range 3 {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		sec, err := secrets.Get(cctx, name, metav1.GetOptions{})
		cancel()
		if err == nil {
			return writeShared(cfg, sec.Data)
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("read Secret %s/%s: %w", r.Namespace, name, err)
		}
		data, err := createShared(cfg)
		if err != nil {
			return err
		}
		cctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		_, err = secrets.Create(cctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.Namespace,
			Labels: map[string]string{"app.kubernetes.io/name": "edgewire", "app.kubernetes.io/component": "coordinator"}},
			Data: data}, metav1.CreateOptions{})
		cancel()
		if err == nil {
			cfg.Logger.Info("created the Secret of shared coordinator keys", "secret", r.Namespace+"/"+name)
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create Secret %s/%s: %w", r.Namespace, name, err)
		}
	}
	return fmt.Errorf("Secret %s/%s: created and deleted meanwhile, three times", r.Namespace, name)
}

// createShared creates the shared files in the data dir the way a lone
// coordinator does (keeping any there) and returns their contents.
func createShared(cfg Config) (map[string][]byte, error) {
	if cfg.TLSCert == "" {
		if _, err := tlsIdentity(cfg); err != nil {
			return nil, err
		}
	}
	if _, err := loadOrCreateTicketKey(filepath.Join(cfg.DataDir, TicketKeyFile)); err != nil {
		return nil, err
	}
	if _, err := relayKey(cfg); err != nil {
		return nil, err
	}
	if _, err := adminToken(filepath.Join(cfg.DataDir, AdminTokenFile)); err != nil {
		return nil, err
	}
	data := map[string][]byte{}
	for _, f := range sharedFiles {
		b, err := os.ReadFile(filepath.Join(cfg.DataDir, f.path))
		if errors.Is(err, os.ErrNotExist) {
			continue // no CA of our own: the operator's --tls-ca
		}
		if err != nil {
			return nil, err
		}
		data[f.key] = b
	}
	return data, nil
}

// writeShared writes the Secret's files into the data dir.
func writeShared(cfg Config, data map[string][]byte) error {
	for _, f := range sharedFiles {
		b, ok := data[f.key]
		if !ok {
			continue
		}
		path := filepath.Join(cfg.DataDir, f.path)
		if cur, err := os.ReadFile(path); err == nil && string(cur) == string(b) {
			continue // already so (perhaps a read-only mount: the chart's admin token)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := atomicfile.Write(path, b, f.mode); err != nil {
			return fmt.Errorf("write shared %s: %w", f.key, err)
		}
	}
	return nil
}

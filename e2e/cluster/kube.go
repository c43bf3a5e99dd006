package cluster

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/edgewire/edgewire/e2e/kube"
	"github.com/edgewire/edgewire/e2e/lab"
)

// Kube is a kube-apiserver and etcd running in a lab host's namespace,
// with a client configuration that dials through that namespace. Its
// processes can be stopped and started again (same ports, certificates
// and data), as an API server outage.
type Kube struct {
	*kube.Cluster
	// Config reaches the API server from the test process.
	Config *rest.Config

	host  *lab.Host
	mu    sync.Mutex
	argv  map[string][]string
	procs map[string]*lab.Process
}

// KubeOptions tune StartKube.
type KubeOptions struct {
	// OnHostAddr makes the API server listen on the host's lab address
	// (reachable from other lab hosts) instead of its loopback.
	OnHostAddr bool
}

// StartKube starts etcd and kube-apiserver on h, state under the lab's
// directory.
func StartKube(t testing.TB, l *lab.Lab, h *lab.Host, opts KubeOptions) *Kube {
	t.Helper()
	k := &Kube{host: h, argv: map[string][]string{}, procs: map[string]*lab.Process{}}
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) { return h.DialTCP(ctx, addr) }
	cfg := kube.Config{
		Dir: filepath.Join(l.Dir(), "kube-"+h.Name()),
		Run: func(name string, argv ...string) (func(), error) {
			k.mu.Lock()
			k.argv[name] = argv
			k.mu.Unlock()
			if err := k.Start(name); err != nil {
				return nil, err
			}
			return func() { k.Stop(name) }, nil
		},
		DialContext: dial,
	}
	if opts.OnHostAddr {
		cfg.Addr = h.IP()
	}
	k.Cluster = kube.StartConfig(t, cfg)
	k.Config = &rest.Config{Host: k.URL, BearerToken: k.Token, TLSClientConfig: rest.TLSClientConfig{CAFile: k.CAFile},
		Dial: dial, Timeout: 30 * time.Second, QPS: 500, Burst: 1000}
	return k
}

// Start (re)starts one of the processes ("etcd", "kube-apiserver").
func (k *Kube) Start(name string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	p, err := k.host.Start(name, nil, k.argv[name]...)
	if err != nil {
		return err
	}
	k.procs[name] = p
	return nil
}

// Stop stops one of the processes and waits for it.
func (k *Kube) Stop(name string) {
	k.mu.Lock()
	p := k.procs[name]
	k.mu.Unlock()
	if p != nil {
		p.Stop(10 * time.Second)
	}
}

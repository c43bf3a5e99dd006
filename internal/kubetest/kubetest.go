// Package kubetest starts a real kube-apiserver and etcd (e2e/kube) for
// the tests of packages that talk to the Kubernetes API, with client-go
// configuration for it and a fresh namespace per test.
package kubetest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/edgewire/edgewire/e2e/kube"
)

// API is a running API server.
type API struct {
	Cluster *kube.Cluster
	n       atomic.Int64
}

// Start runs an API server for the test (skipped under -short; see
// kube.Binaries for what happens when it cannot be built).
func Start(t *testing.T) *API {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	return &API{Cluster: kube.Start(t, t.TempDir(), nil)}
}

// Config returns a client configuration; wrap, if set, wraps its
// transport (to cut a client off the API server).
func (a *API) Config(t testing.TB, wrap func(http.RoundTripper) http.RoundTripper) *rest.Config {
	t.Helper()
	ca, err := os.ReadFile(a.Cluster.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	rc := &rest.Config{Host: a.Cluster.URL, BearerToken: a.Cluster.Token, TLSClientConfig: rest.TLSClientConfig{CAData: ca}, QPS: 1000, Burst: 1000}
	if wrap != nil {
		rc.WrapTransport = wrap
	}
	return rc
}

// Clients returns a typed and a dynamic client.
func (a *API) Clients(t testing.TB, wrap func(http.RoundTripper) http.RoundTripper) (kubernetes.Interface, dynamic.Interface) {
	t.Helper()
	rc := a.Config(t, wrap)
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs, dyn
}

// Namespace creates a fresh namespace.
func (a *API) Namespace(t testing.TB) string {
	t.Helper()
	cs, _ := a.Clients(t, nil)
	ns := fmt.Sprintf("ew-%d", a.n.Add(1))
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return ns
}

// Cut is a transport wrapper whose requests fail while it is set: a
// client cut off the API server, the server itself untouched.
type Cut struct{ on atomic.Bool }

// Set cuts (true) or restores (false) the clients wrapped by c.
func (c *Cut) Set(on bool) { c.on.Store(on) }

// Wrap is for API.Config.
func (c *Cut) Wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		if c.on.Load() {
			return nil, fmt.Errorf("dial tcp %s: connect: connection refused (kubetest.Cut)", r.URL.Host)
		}
		return rt.RoundTrip(r)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

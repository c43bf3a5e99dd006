package kubesource

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/edgewire/edgewire/coordinator/svcsource"
	"github.com/edgewire/edgewire/types/services"
)

// recorder is a svcsource.Sink that keeps what it was told.
type recorder struct {
	mu       sync.Mutex // guards the fields below
	svcs     map[string]*services.Service
	deleted  []string
	podCIDRs map[string][]netip.Prefix
	synced   int    // Synced calls
	atSync   string // what it held at the first
}

var _ svcsource.Sink = (*recorder)(nil)

func (r *recorder) SetService(s *services.Service) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := s.Validate(); err != nil {
		panic("sink got an invalid Service: " + err.Error())
	}
	r.svcs[s.Key()] = s
}

func (r *recorder) DeleteService(k string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.svcs, k)
	r.deleted = append(r.deleted, k)
}

func (r *recorder) SetKubeNode(name string, cidrs []netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.podCIDRs[name] = cidrs
	return nil
}

func (r *recorder) DeleteKubeNode(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.podCIDRs, name)
}

func (r *recorder) Synced() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.synced++
	r.atSync = fmt.Sprintf("%d services, %d nodes with pod CIDRs", len(r.svcs), len(r.podCIDRs))
}

// waitFor polls until ok holds for the recorder (informers deliver in
// their own goroutines).
func (r *recorder) waitFor(t *testing.T, what string, ok func(*recorder) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		done := ok(r)
		r.mu.Unlock()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink never got %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRun: the source hands the sink validated domain Services built
// from Services and their EndpointSlices, withdraws invalid and deleted
// ones, and reports Nodes' pod CIDRs.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-1"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24"}}}
	client := fake.NewClientset(kubeService(nil),
		slice(discoveryv1.AddressTypeIPv4, 8080, endpoint(true, "edge-1", "10.244.1.5")), node)
	src, err := newSource(Config{}, client)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{svcs: map[string]*services.Service{}, podCIDRs: map[string][]netip.Prefix{}}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, rec) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: got %v, want nil after the context ends", err)
		}
	}()

	want := &services.Service{Namespace: "demo", Name: "web", ClusterIPs: addrs("10.96.0.10"),
		Ports:     []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}},
		Endpoints: []services.Endpoint{{Addresses: addrs("10.244.1.5"), NodeName: "edge-1", Ports: map[string]uint16{"http": 8080}}}}
	rec.waitFor(t, "demo/web with its endpoint", func(r *recorder) bool { return reflect.DeepEqual(r.svcs["demo/web"], want) })
	rec.waitFor(t, "edge-1's pod CIDR", func(r *recorder) bool {
		return slices.Equal(r.podCIDRs["edge-1"], []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")})
	})
	// Synced came once, after what existed at the start was handed over.
	rec.waitFor(t, "synced", func(r *recorder) bool { return r.synced > 0 })
	rec.mu.Lock()
	if rec.synced != 1 || rec.atSync != "1 services, 1 nodes with pod CIDRs" {
		t.Errorf("Synced called %d times, holding %s at the first; want once, with 1 service and 1 node", rec.synced, rec.atSync)
	}
	rec.mu.Unlock()

	// A Service that fails validation is withdrawn, not shipped.
	bad := kubeService(func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolSCTP })
	if _, err := client.CoreV1().Services("demo").Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "demo/web withdrawn (SCTP)", func(r *recorder) bool { return r.svcs["demo/web"] == nil && len(r.deleted) > 0 })

	if _, err := client.CoreV1().Services("demo").Update(ctx, kubeService(nil), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "demo/web back", func(r *recorder) bool { return reflect.DeepEqual(r.svcs["demo/web"], want) })
	if err := client.CoreV1().Services("demo").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "demo/web deleted", func(r *recorder) bool { return r.svcs["demo/web"] == nil })
	if err := client.CoreV1().Nodes().Delete(ctx, "edge-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "edge-1 deleted", func(r *recorder) bool { _, ok := r.podCIDRs["edge-1"]; return !ok })
}

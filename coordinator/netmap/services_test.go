package netmap

import (
	"net/netip"
	"testing"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/types/key"
)

func svc(name, ip string) *api.Service {
	return &api.Service{Namespace: "demo", Name: name, ClusterIps: []string{ip},
		Ports: []*api.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}}}
}

func TestServiceDeltas(t *testing.T) {
	r := New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")})
	var k key.Public
	k[0] = 1
	r.Upsert(store.Node{Key: k, Name: "a"})
	r.SetService(svc("web", "10.96.0.10"))
	sub := r.Subscribe(k)
	defer sub.Close()

	full, err := sub.decoded()
	if err != nil || !full.GetFull() || len(full.GetServices()) != 1 {
		t.Fatalf("first map: got full=%v with %d services (%v), want full with 1", full.GetFull(), len(full.GetServices()), err)
	}

	v := r.Version()
	r.SetService(svc("web", "10.96.0.10")) // unchanged: no new version
	if r.Version() != v {
		t.Errorf("an unchanged Service bumped the version: got %d, want %d", r.Version(), v)
	}

	r.SetService(svc("web", "10.96.0.11"))
	r.SetService(svc("web", "10.96.0.12")) // coalesces with the previous change
	r.SetService(svc("api", "10.96.0.20"))
	d, err := sub.decoded()
	if err != nil || d.GetFull() || d.GetBaseVersion() != full.GetVersion() {
		t.Fatalf("delta: got full=%v base %d (%v), want a delta from %d", d.GetFull(), d.GetBaseVersion(), err, full.GetVersion())
	}
	got := map[string]string{}
	for _, s := range d.GetServices() {
		got[s.GetName()] = s.GetClusterIps()[0]
	}
	if len(d.GetServices()) != 2 || got["web"] != "10.96.0.12" || got["api"] != "10.96.0.20" {
		t.Errorf("delta services: got %v (%d entries), want web=10.96.0.12 and api=10.96.0.20 once each", got, len(d.GetServices()))
	}
	if len(d.GetPeers()) != 0 || d.GetSelf() != nil {
		t.Errorf("a Service-only delta carried nodes: %d peers, self %v", len(d.GetPeers()), d.GetSelf())
	}

	r.DeleteService("demo/web")
	r.DeleteService("demo/nosuch") // not there: no change
	d, err = sub.decoded()
	if err != nil || len(d.GetRemovedServices()) != 1 || d.GetRemovedServices()[0] != "demo/web" || len(d.GetServices()) != 0 {
		t.Fatalf("delete delta: got removed %v services %d (%v), want removed [demo/web]", d.GetRemovedServices(), len(d.GetServices()), err)
	}
	if r.Services() != 1 {
		t.Errorf("services: got %d, want 1", r.Services())
	}
}

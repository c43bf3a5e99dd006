package netmap

import (
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/coordinator/svcsource"
	"github.com/edgewire/edgewire/types/key"
	"github.com/edgewire/edgewire/types/services"
)

// The registry is where sources put the Service map.
var _ svcsource.Sink = (*Registry)(nil)

func svc(name, ip string) *services.Service {
	return &services.Service{Namespace: "demo", Name: name, ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)},
		Ports: []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}}}
}

func TestServiceDeltas(t *testing.T) {
	r := New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")})
	var k key.Public
	k[0] = 1
	r.Upsert(store.Node{Key: k, Name: "a"})
	r.SetService(svc("web", "10.96.0.10"))
	sub := r.Subscribe(k, nil)
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

// A Service set through the Sink reaches a subscriber's full map and
// deltas as the api.Service agents decode, every field in place; it is
// converted once per change, however many maps carry it.
func TestServiceThroughSink(t *testing.T) {
	r := newRegistry(t, 2)
	var sink svcsource.Sink = r
	sink.SetService(&services.Service{
		Namespace: "db", Name: "pg",
		ClusterIPs:       []netip.Addr{netip.MustParseAddr("10.96.0.11"), netip.MustParseAddr("fd00:96::11")},
		Ports:            []services.Port{{Name: "pg", Protocol: services.TCP, Port: 5432}, {Name: "dns", Protocol: services.UDP, Port: 53}},
		ClientIPAffinity: true, AffinityTimeout: 10 * time.Minute,
		Endpoints: []services.Endpoint{
			{Addresses: []netip.Addr{netip.MustParseAddr("10.244.2.9")}, Hostname: "pg-1", NodeName: "edge-2", Ports: map[string]uint16{"pg": 5432}},
			{Addresses: []netip.Addr{netip.MustParseAddr("10.244.1.9"), netip.MustParseAddr("fd00::9")}, Hostname: "pg-0", NodeName: "edge-1", Ports: map[string]uint16{"pg": 5432, "dns": 5353}},
		},
	})
	want := &api.Service{
		Namespace: "db", Name: "pg",
		ClusterIps:       []string{"10.96.0.11", "fd00:96::11"},
		Ports:            []*api.ServicePort{{Name: "pg", Protocol: "TCP", Port: 5432}, {Name: "dns", Protocol: "UDP", Port: 53}},
		ClientIpAffinity: true, AffinityTimeoutSeconds: 600,
		Endpoints: []*api.ServiceEndpoint{ // in address order
			{Addresses: []string{"10.244.1.9", "fd00::9"}, Hostname: "pg-0", NodeName: "edge-1", Ports: map[string]uint32{"pg": 5432, "dns": 5353}},
			{Addresses: []string{"10.244.2.9"}, Hostname: "pg-1", NodeName: "edge-2", Ports: map[string]uint32{"pg": 5432}},
		},
	}
	s := r.Subscribe(nodeKey(1), nil)
	defer s.Close()
	full := next(t, s)
	if len(full.GetServices()) != 1 || !proto.Equal(full.GetServices()[0], want) {
		t.Fatalf("full map: got Services %v, want [%v]", full.GetServices(), want)
	}
	r.mu.Lock()
	pb := r.services["db/pg"].pb
	r.mu.Unlock()

	// A second stream's full map at another publication reuses the
	// conversion.
	r.Upsert(node(3))
	s2 := r.Subscribe(nodeKey(2), nil)
	defer s2.Close()
	if m := next(t, s2); len(m.GetServices()) != 1 || !proto.Equal(m.GetServices()[0], want) {
		t.Fatalf("second full map: got Services %v, want [%v]", m.GetServices(), want)
	}
	r.mu.Lock()
	same := r.services["db/pg"].pb == pb
	r.mu.Unlock()
	if !same {
		t.Error("an unchanged Service was converted again for a second map, want its entry reused")
	}

	// A change reaches the delta as the new entry.
	changed := svc("pg", "10.96.0.12")
	changed.Namespace = "db"
	sink.SetService(changed)
	d := next(t, s)
	want = &api.Service{Namespace: "db", Name: "pg", ClusterIps: []string{"10.96.0.12"},
		Ports: []*api.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}}}
	if d.GetFull() || len(d.GetServices()) != 1 || !proto.Equal(d.GetServices()[0], want) {
		t.Errorf("delta: got full=%v Services %v, want a delta with [%v]", d.GetFull(), d.GetServices(), want)
	}
}

// Equal Services are no change, whoever built them; any field that
// differs is one.
func TestSetServiceUnchanged(t *testing.T) {
	base := func() *services.Service {
		return &services.Service{Namespace: "demo", Name: "web",
			ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports:      []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}},
			Endpoints: []services.Endpoint{{Addresses: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, Hostname: "w-0",
				NodeName: "edge-1", Ports: map[string]uint16{"http": 8080}}}}
	}
	tests := []struct {
		name    string
		mod     func(*services.Service)
		changed bool
	}{
		{"equal, built again", func(*services.Service) {}, false},
		{"cluster IP", func(s *services.Service) { s.ClusterIPs[0] = netip.MustParseAddr("10.96.0.11") }, true},
		{"port", func(s *services.Service) { s.Ports[0].Port = 81 }, true},
		{"protocol", func(s *services.Service) { s.Ports[0].Protocol = services.UDP }, true},
		{"affinity", func(s *services.Service) { s.ClientIPAffinity = true }, true},
		{"affinity timeout", func(s *services.Service) { s.AffinityTimeout = time.Hour }, true},
		{"endpoint added", func(s *services.Service) {
			s.Endpoints = append(s.Endpoints, services.Endpoint{Addresses: []netip.Addr{netip.MustParseAddr("10.244.2.5")}})
		}, true},
		{"endpoint address", func(s *services.Service) { s.Endpoints[0].Addresses[0] = netip.MustParseAddr("10.244.1.6") }, true},
		{"endpoint hostname", func(s *services.Service) { s.Endpoints[0].Hostname = "w-1" }, true},
		{"endpoint node", func(s *services.Service) { s.Endpoints[0].NodeName = "edge-2" }, true},
		{"endpoint target port", func(s *services.Service) { s.Endpoints[0].Ports["http"] = 8081 }, true},
		{"endpoint port name", func(s *services.Service) { s.Endpoints[0].Ports = map[string]uint16{"web": 8080} }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(prefixes)
			r.SetService(base())
			v := r.Version()
			s := base()
			tt.mod(s)
			r.SetService(s)
			if got := r.Version() != v; got != tt.changed {
				t.Errorf("got changed=%v (version %d -> %d), want %v", got, v, r.Version(), tt.changed)
			}
		})
	}
}

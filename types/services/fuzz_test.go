package services

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
)

// FuzzServiceEntries builds the Service table from network-map Service
// entries decoded from fuzz bytes, as the agent does with what the
// coordinator sends: every entry is either refused whole or yields a
// Service that validates, survives a round trip through the wire form
// unchanged, and goes into a table with the others.
func FuzzServiceEntries(f *testing.F) {
	seed := func(svcs ...*api.Service) {
		b, err := proto.Marshal(&api.NetworkMap{Services: svcs})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(&api.Service{Namespace: "default", Name: "web", ClusterIps: []string{"10.96.0.10"},
		Ports:     []*api.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}},
		Endpoints: []*api.ServiceEndpoint{{Addresses: []string{"10.244.1.5"}, NodeName: "edge-1", Ports: map[string]uint32{"http": 8080}}}})
	seed(&api.Service{Namespace: "db", Name: "pg", ClientIpAffinity: true, AffinityTimeoutSeconds: 60,
		Ports:     []*api.ServicePort{{Name: "pg", Protocol: "TCP", Port: 5432}, {Name: "dns", Protocol: "UDP", Port: 53}},
		Endpoints: []*api.ServiceEndpoint{{Addresses: []string{"fd00::7", "10.0.3.8"}, Hostname: "db-0", Ports: map[string]uint32{"pg": 5432}}}},
		&api.Service{Namespace: "db", Name: "pg"})
	seed(&api.Service{Namespace: "Bad_NS", Name: "x", ClusterIps: []string{"not-an-ip"}, Ports: []*api.ServicePort{{Protocol: "SCTP", Port: 70000}}})
	f.Add([]byte{0x52, 0x02, 0x0a, 0x00})

	f.Fuzz(func(t *testing.T, b []byte) {
		var m api.NetworkMap
		if err := proto.Unmarshal(b, &m); err != nil {
			return
		}
		var ok []*Service
		seen := map[string]bool{}
		for _, p := range m.GetServices() {
			s, err := FromProto(p)
			if err != nil {
				continue
			}
			if err := s.Validate(); err != nil {
				t.Fatalf("FromProto accepted a Service that does not validate: %v", err)
			}
			wire := ToProto(s)
			again, err := FromProto(wire)
			if err != nil {
				t.Fatalf("round trip of an accepted Service refused: %v", err)
			}
			if !proto.Equal(ToProto(again), wire) {
				t.Fatalf("round trip changed the Service:\n%v\n%v", wire, ToProto(again))
			}
			if seen[s.Key()] {
				continue // the agent's map is keyed by namespace/name
			}
			seen[s.Key()] = true
			ok = append(ok, s)
		}
		tbl, err := NewTable(ok)
		if err != nil {
			t.Fatalf("table of accepted Services with distinct keys refused: %v", err)
		}
		if tbl.Len() != len(ok) {
			t.Fatalf("table holds %d Services, want %d", tbl.Len(), len(ok))
		}
		for _, s := range ok {
			if tbl.Get(s.Namespace, s.Name) != s {
				t.Fatalf("table lost %s", s.Key())
			}
		}
	})
}

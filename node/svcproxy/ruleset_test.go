package svcproxy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/edgewire/edgewire/node/services"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// ep is an endpoint serving the unnamed port on port.
func ep(ip string, port uint16) services.Endpoint {
	return services.Endpoint{Addresses: addrs(ip), Ports: map[string]uint16{"": port}}
}

func svc(name, clusterIP string, proto services.Protocol, port uint16, eps ...services.Endpoint) *services.Service {
	s := &services.Service{
		Namespace: "default",
		Name:      name,
		Ports:     []services.Port{{Protocol: proto, Port: port}},
		Endpoints: eps,
	}
	if clusterIP != "" {
		s.ClusterIPs = addrs(clusterIP)
	}
	return s
}

func table(t testing.TB, svcs ...*services.Service) *services.Table {
	t.Helper()
	tb, err := services.NewTable(svcs)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func bigTable(t testing.TB, n, eps int) *services.Table {
	var svcs []*services.Service
	for i := range n {
		s := svc(fmt.Sprintf("svc-%d", i), fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), services.TCP, 80)
		for j := range eps {
			s.Endpoints = append(s.Endpoints, ep(fmt.Sprintf("10.%d.%d.%d", 100+j, i/250, i%250+1), 8080))
		}
		svcs = append(svcs, s)
	}
	return table(t, svcs...)
}

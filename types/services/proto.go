package services

import (
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/edgewire/edgewire/api"
)

// FromProto converts and validates a Service from the network map.
func FromProto(p *api.Service) (*Service, error) {
	s := &Service{
		Namespace:        p.GetNamespace(),
		Name:             p.GetName(),
		ClientIPAffinity: p.GetClientIpAffinity(),
		AffinityTimeout:  time.Duration(p.GetAffinityTimeoutSeconds()) * time.Second,
	}
	if p.GetAffinityTimeoutSeconds() < 0 || p.GetAffinityTimeoutSeconds() > 86400 {
		return nil, fmt.Errorf("service %s: affinity timeout %ds out of range", s.Key(), p.GetAffinityTimeoutSeconds())
	}
	for _, ip := range p.GetClusterIps() {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("service %s: cluster IP %q: %w", s.Key(), ip, err)
		}
		s.ClusterIPs = append(s.ClusterIPs, a)
	}
	for _, pp := range p.GetPorts() {
		if pp.GetPort() > 65535 {
			return nil, fmt.Errorf("service %s port %q: %d out of range", s.Key(), pp.GetName(), pp.GetPort())
		}
		s.Ports = append(s.Ports, Port{Name: pp.GetName(), Protocol: Protocol(pp.GetProtocol()), Port: uint16(pp.GetPort())})
	}
	for _, pe := range p.GetEndpoints() {
		e := Endpoint{Hostname: pe.GetHostname(), NodeName: pe.GetNodeName(), HostNetwork: pe.GetHostNetwork(), Ports: map[string]uint16{}}
		for _, a := range pe.GetAddresses() {
			addr, err := netip.ParseAddr(a)
			if err != nil {
				return nil, fmt.Errorf("service %s endpoint %q: %w", s.Key(), a, err)
			}
			e.Addresses = append(e.Addresses, addr)
		}
		for name, port := range pe.GetPorts() {
			if port == 0 || port > 65535 {
				return nil, fmt.Errorf("service %s endpoint port %q: %d out of range", s.Key(), name, port)
			}
			e.Ports[name] = uint16(port)
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// ToProto converts a Service for the network map (deterministically).
func ToProto(s *Service) *api.Service {
	p := &api.Service{
		Namespace: s.Namespace, Name: s.Name, ClientIpAffinity: s.ClientIPAffinity,
		AffinityTimeoutSeconds: int32(s.AffinityTimeout / time.Second),
	}
	for _, ip := range s.ClusterIPs {
		p.ClusterIps = append(p.ClusterIps, ip.String())
	}
	for _, pp := range s.Ports {
		p.Ports = append(p.Ports, &api.ServicePort{Name: pp.Name, Protocol: string(pp.Protocol), Port: uint32(pp.Port)})
	}
	eps := append([]Endpoint(nil), s.Endpoints...)
	sort.SliceStable(eps, func(i, j int) bool { return eps[i].Less(&eps[j]) })
	for _, e := range eps {
		pe := &api.ServiceEndpoint{Hostname: e.Hostname, NodeName: e.NodeName, HostNetwork: e.HostNetwork, Ports: map[string]uint32{}}
		for _, a := range e.Addresses {
			pe.Addresses = append(pe.Addresses, a.String())
		}
		for n, port := range e.Ports {
			pe.Ports[n] = uint32(port)
		}
		p.Endpoints = append(p.Endpoints, pe)
	}
	return p
}

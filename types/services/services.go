// Package services is the agent's model of the Kubernetes Services it
// serves: what the coordinator ships in the network map's Service map,
// parsed and validated once, then read by the DNS server and the ClusterIP
// DNAT rules. A Table is immutable; a new map means a new Table.
package services

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// Protocol is a Service port protocol.
type Protocol string

const (
	TCP Protocol = "TCP"
	UDP Protocol = "UDP"
)

// Port is a Service port.
type Port struct {
	Name     string // "" for a single unnamed port
	Protocol Protocol
	Port     uint16 // the Service (ClusterIP) port
}

// Endpoint is one ready endpoint of a Service.
type Endpoint struct {
	Addresses []netip.Addr
	Hostname  string            // for headless Services: <hostname>.<svc>.<ns>.svc.<domain>
	NodeName  string            // the Kubernetes Node it runs on, "" if not known
	Ports     map[string]uint16 // target port by Service port name ("" for unnamed)
	// HostNetwork: the address is one of its node's own addresses (a
	// hostNetwork pod or a host service), which may be the same LAN
	// address on every site; it is reached through that node.
	HostNetwork bool
}

// Less orders endpoints by first address, then node name: the map
// carries them in this order, and two nodes' endpoints may share an
// address (every site's default bridge hands out 172.17.0.2).
func (e *Endpoint) Less(o *Endpoint) bool {
	if c := e.Addresses[0].Compare(o.Addresses[0]); c != 0 {
		return c < 0
	}
	return e.NodeName < o.NodeName
}

// Service is a Kubernetes Service with its ready endpoints.
type Service struct {
	Namespace        string
	Name             string
	ClusterIPs       []netip.Addr // empty for headless Services
	Ports            []Port
	ClientIPAffinity bool
	AffinityTimeout  time.Duration // 0 with affinity: the Kubernetes default, 3h
	Endpoints        []Endpoint
}

// Key is "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// Headless reports whether the Service has no ClusterIP (DNS answers
// endpoint addresses instead).
func (s *Service) Headless() bool { return len(s.ClusterIPs) == 0 }

// Validate checks a Service the way the agent needs it to hold: a bad
// Service is refused whole, never half-applied.
func (s *Service) Validate() error {
	if !dnsLabel(s.Namespace) || !dnsLabel(s.Name) {
		return fmt.Errorf("service %q: namespace and name must be DNS labels", s.Key())
	}
	seen := map[string]bool{}
	for _, p := range s.Ports {
		if p.Protocol != TCP && p.Protocol != UDP {
			return fmt.Errorf("service %s port %q: protocol %q not supported (TCP, UDP)", s.Key(), p.Name, p.Protocol)
		}
		if p.Port == 0 {
			return fmt.Errorf("service %s port %q: port 0", s.Key(), p.Name)
		}
		if p.Name != "" && !dnsLabel(p.Name) {
			return fmt.Errorf("service %s: port name %q is not a DNS label", s.Key(), p.Name)
		}
		k := p.Name + "/" + string(p.Protocol)
		if seen[k] {
			return fmt.Errorf("service %s: duplicate port %q/%s", s.Key(), p.Name, p.Protocol)
		}
		seen[k] = true
	}
	for _, ip := range s.ClusterIPs {
		if !ip.IsValid() || ip.IsUnspecified() {
			return fmt.Errorf("service %s: bad cluster IP %v", s.Key(), ip)
		}
	}
	for _, e := range s.Endpoints {
		if len(e.Addresses) == 0 {
			return fmt.Errorf("service %s: endpoint without addresses", s.Key())
		}
		for _, a := range e.Addresses {
			if !a.IsValid() || a.IsUnspecified() {
				return fmt.Errorf("service %s: bad endpoint address %v", s.Key(), a)
			}
		}
		for name, port := range e.Ports {
			if port == 0 {
				return fmt.Errorf("service %s: endpoint port %q is 0", s.Key(), name)
			}
		}
		if e.Hostname != "" && !dnsLabel(e.Hostname) {
			return fmt.Errorf("service %s: endpoint hostname %q is not a DNS label", s.Key(), e.Hostname)
		}
	}
	return nil
}

func dnsLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Table is an immutable set of Services, safe for concurrent reads.
type Table struct {
	byKey map[string]*Service
	keys  []string // sorted
}

// NewTable builds a table; every Service must be valid and keys unique.
func NewTable(svcs []*Service) (*Table, error) {
	t := &Table{byKey: make(map[string]*Service, len(svcs))}
	for _, s := range svcs {
		if err := s.Validate(); err != nil {
			return nil, err
		}
		if _, dup := t.byKey[s.Key()]; dup {
			return nil, fmt.Errorf("service %s listed twice", s.Key())
		}
		t.byKey[s.Key()] = s
		t.keys = append(t.keys, s.Key())
	}
	sort.Strings(t.keys)
	return t, nil
}

// Get returns the Service namespace/name, or nil.
func (t *Table) Get(namespace, name string) *Service {
	if t == nil {
		return nil
	}
	return t.byKey[namespace+"/"+name]
}

// All returns the Services ordered by key. The caller must not modify them.
func (t *Table) All() []*Service {
	if t == nil {
		return nil
	}
	out := make([]*Service, len(t.keys))
	for i, k := range t.keys {
		out[i] = t.byKey[k]
	}
	return out
}

// Len returns the number of Services.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return len(t.keys)
}

// SplitKey splits "namespace/name".
func SplitKey(k string) (namespace, name string, ok bool) {
	namespace, name, ok = strings.Cut(k, "/")
	return namespace, name, ok && namespace != "" && name != ""
}

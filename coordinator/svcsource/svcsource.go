// Package svcsource is where the coordinator's Service map and nodes' pod
// CIDRs come from. The core depends only on Source and Sink; Kubernetes
// (package kubesource, the only importer of client-go) is one Source, a
// services file for plain systemd fleets is another.
package svcsource

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/edgewire/edgewire/types/services"
)

// Sink receives the Service map. Implementations are safe for concurrent
// use.
type Sink interface {
	// SetService adds or replaces the Service svc.Key(). Sources hand
	// over only valid Services (svc.Validate) and give up svc: neither
	// side modifies it afterwards.
	SetService(svc *services.Service)
	DeleteService(key string) // "namespace/name"
	// SetKubeNode records a Kubernetes Node and its pod CIDRs (refused
	// whole if they overlap another Node's or fail the route policy);
	// DeleteKubeNode forgets it.
	SetKubeNode(name string, podCIDRs []netip.Prefix) error
	DeleteKubeNode(name string)
	// Synced says the source has handed over everything it had when it
	// started (called once): until then a map would lack Services and
	// pod CIDRs that exist, and agents would tear their rules down.
	Synced()
}

// Source feeds a Sink until ctx ends.
type Source interface {
	Run(ctx context.Context, sink Sink) error
}

// FileService is one Service in a services file.
//
//	{"services": [{"namespace": "demo", "name": "web", "cluster_ips": ["10.96.0.10"],
//	  "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
//	  "endpoints": [{"addresses": ["10.42.1.5"], "node_name": "edge1", "ports": {"http": 8080}}]}]}
type FileService struct {
	Namespace        string         `json:"namespace"`
	Name             string         `json:"name"`
	ClusterIPs       []string       `json:"cluster_ips"`
	Ports            []FilePort     `json:"ports"`
	ClientIPAffinity bool           `json:"client_ip_affinity"`
	AffinityTimeout  int32          `json:"affinity_timeout_seconds"`
	Endpoints        []FileEndpoint `json:"endpoints"`
}

// FilePort is a Service port in a services file.
type FilePort struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Port     uint32 `json:"port"`
}

// FileEndpoint is an endpoint in a services file.
type FileEndpoint struct {
	Addresses []string          `json:"addresses"`
	Hostname  string            `json:"hostname"`
	NodeName  string            `json:"node_name"`
	Ports     map[string]uint32 `json:"ports"`
}

// File serves the Services declared in a JSON file, re-read when it
// changes. A file that fails to parse or validate is refused whole and
// the last good content stays.
type File struct {
	Path     string
	Interval time.Duration // how often to look for changes (default 5s)
	Logger   *slog.Logger
}

// Load reads and validates a services file.
func Load(path string) ([]*services.Service, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f struct {
		Services []FileService `json:"services"`
	}
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("services file %s: %w", path, err)
	}
	var list []*services.Service
	for _, fs := range f.Services {
		s, err := fs.service()
		if err != nil {
			return nil, fmt.Errorf("services file %s: %w", path, err)
		}
		list = append(list, s)
	}
	// The table validates every Service, once, and refuses a key listed
	// twice.
	if _, err := services.NewTable(list); err != nil {
		return nil, fmt.Errorf("services file %s: %w", path, err)
	}
	return list, nil
}

// maxAffinityTimeout is the longest ClientIP affinity Kubernetes allows.
const maxAffinityTimeout = 86400 // seconds

// service converts fs. It refuses only what does not fit the domain
// types (bad addresses, numbers out of range); Load validates the rest.
func (fs *FileService) service() (*services.Service, error) {
	s := &services.Service{Namespace: fs.Namespace, Name: fs.Name, ClientIPAffinity: fs.ClientIPAffinity,
		AffinityTimeout: time.Duration(fs.AffinityTimeout) * time.Second}
	if fs.AffinityTimeout < 0 || fs.AffinityTimeout > maxAffinityTimeout {
		return nil, fmt.Errorf("service %s: affinity timeout %ds out of range (0-%d)", s.Key(), fs.AffinityTimeout, maxAffinityTimeout)
	}
	for _, ip := range fs.ClusterIPs {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("service %s: cluster IP %q: %w", s.Key(), ip, err)
		}
		s.ClusterIPs = append(s.ClusterIPs, a)
	}
	for _, fp := range fs.Ports {
		proto := services.Protocol(strings.ToUpper(fp.Protocol))
		if proto == "" {
			proto = services.TCP
		}
		if fp.Port > 65535 {
			return nil, fmt.Errorf("service %s port %q: %d out of range", s.Key(), fp.Name, fp.Port)
		}
		s.Ports = append(s.Ports, services.Port{Name: fp.Name, Protocol: proto, Port: uint16(fp.Port)})
	}
	for _, fe := range fs.Endpoints {
		e := services.Endpoint{Hostname: fe.Hostname, NodeName: fe.NodeName, Ports: make(map[string]uint16, len(fe.Ports))}
		for _, a := range fe.Addresses {
			addr, err := netip.ParseAddr(a)
			if err != nil {
				return nil, fmt.Errorf("service %s endpoint %q: %w", s.Key(), a, err)
			}
			e.Addresses = append(e.Addresses, addr)
		}
		for name, port := range fe.Ports {
			if port == 0 || port > 65535 {
				return nil, fmt.Errorf("service %s endpoint port %q: %d out of range", s.Key(), name, port)
			}
			e.Ports[name] = uint16(port)
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	return s, nil
}

// Run implements Source.
func (f *File) Run(ctx context.Context, sink Sink) error {
	log := f.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	interval := f.Interval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	var lastMod time.Time
	have := map[string]bool{}
	synced := false
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if st, err := os.Stat(f.Path); err != nil {
			log.Warn("services file", "err", err)
		} else if !st.ModTime().Equal(lastMod) {
			svcs, err := Load(f.Path)
			if err != nil {
				log.Error("services file refused; keeping the previous Services", "err", err)
			} else {
				lastMod = st.ModTime()
				next := map[string]bool{}
				for _, s := range svcs {
					next[s.Key()] = true
					sink.SetService(s)
				}
				for k := range have {
					if !next[k] {
						sink.DeleteService(k)
					}
				}
				have = next
				log.Info("services file loaded", "services", len(svcs))
			}
		}
		if !synced {
			synced = true
			sink.Synced() // the first look, whatever it found
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

var _ Source = (*File)(nil)

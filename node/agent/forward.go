package agent

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgewire/edgewire/node/svcfwd"
	"github.com/edgewire/edgewire/node/svcpath"
	"github.com/edgewire/edgewire/types/services"
)

// forwarding is the agent's part of the node-forwarded Service path
// (package svcfwd): the Server for endpoints on this node, and the
// Ingress for endpoints on other nodes whose addresses the overlay
// cannot route. Both bind this node's overlay IPv4 address, which is
// known only once a map has arrived and may change with a new map, so
// setAddr (re)starts them.
type forwarding struct {
	a      *Agent
	port   uint16 // the Servers' port
	first  uint16 // the Ingress's port range
	last   uint16
	parent context.Context

	allow atomic.Pointer[fwdAllow]

	mu     sync.Mutex // guards the fields below
	addr   netip.Addr
	in     *svcfwd.Ingress
	srv    *svcfwd.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// fwdAllow is what the Server forwards: from overlay peers only, to the
// endpoints of Services on this node.
type fwdAllow struct {
	peers map[netip.Addr]bool
	to    map[fwdTo]bool
}

type fwdTo struct {
	ap    netip.AddrPort
	proto services.Protocol
}

func (f *forwarding) allowed(peer netip.Addr, to netip.AddrPort, proto services.Protocol) bool {
	al := f.allow.Load()
	return al != nil && al.peers[peer] && al.to[fwdTo{to, proto}]
}

// setAllow makes the Server forward to t's endpoints on this node (self)
// for peers.
func (f *forwarding) setAllow(t *services.Table, self svcpath.Node, peers []svcpath.Node) {
	al := &fwdAllow{peers: map[netip.Addr]bool{}, to: map[fwdTo]bool{}}
	for _, p := range peers {
		if p.Overlay.IsValid() {
			al.peers[p.Overlay] = true
		}
	}
	if self.KubeNode != "" {
		for _, s := range t.All() {
			for _, e := range s.Endpoints {
				if e.NodeName != self.KubeNode {
					continue
				}
				for _, a := range e.Addresses {
					for _, p := range s.Ports {
						if port := e.Ports[p.Name]; port != 0 {
							al.to[fwdTo{netip.AddrPortFrom(a.Unmap(), port), p.Protocol}] = true
						}
					}
				}
			}
		}
	}
	f.allow.Store(al)
}

// setAddr makes the Server and the Ingress bind addr (an invalid addr
// stops them).
func (f *forwarding) setAddr(addr netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if addr == f.addr {
		return
	}
	f.stopLocked()
	f.addr = addr
	if !addr.Is4() {
		return
	}
	log := f.a.log.With("src", "forward")
	in, err := svcfwd.NewIngress(svcfwd.IngressConfig{Listen: addr, FirstPort: f.first, LastPort: f.last, ServerPort: f.port,
		Local: f.a.svc.local.Contains, Logger: log})
	if err != nil {
		log.Error("no forwarding ingress", "err", err)
		return
	}
	srv, err := svcfwd.NewServer(svcfwd.ServerConfig{Listen: netip.AddrPortFrom(addr, f.port), Allow: f.allowed, Logger: log})
	if err != nil {
		in.Close()
		log.Error("no forwarding server", "err", err)
		return
	}
	ctx, cancel := context.WithCancel(f.parent)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// A port taken by something else is retried, not fatal: the
		// rest of the agent works without it.
		for try := 0; ctx.Err() == nil; try++ {
			err := srv.Run(ctx)
			if err == nil || ctx.Err() != nil {
				return
			}
			if try%30 == 0 {
				log.Warn("forwarding server cannot listen; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Second):
			}
		}
	}()
	f.in, f.srv, f.cancel, f.done = in, srv, cancel, done
}

func (f *forwarding) stopLocked() {
	if f.in != nil {
		f.in.Close()
		f.in = nil
	}
	if f.cancel != nil {
		f.cancel()
		<-f.done
		f.cancel, f.done, f.srv = nil, nil, nil
	}
}

// close stops both sides and waits for them.
func (f *forwarding) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopLocked()
	f.addr = netip.Addr{}
}

// ports opens the Ingress ports fws need and returns a lookup for
// svcpath.Rewrite; without an Ingress every forward is left out.
func (f *forwarding) ports(fws []svcpath.Forwarding) func(svcpath.Forwarding) (uint16, bool) {
	f.mu.Lock()
	in := f.in
	f.mu.Unlock()
	if in == nil {
		return func(svcpath.Forwarding) (uint16, bool) { return 0, false }
	}
	ts := make([]svcfwd.Target, len(fws))
	for i, fw := range fws {
		ts[i] = svcfwd.Target(fw)
	}
	got := in.Set(ts)
	return func(fw svcpath.Forwarding) (uint16, bool) {
		p, ok := got[svcfwd.Target(fw)]
		return p, ok
	}
}

// stats returns the counters of both sides (zero when not running).
func (f *forwarding) stats() (svcfwd.IngressStats, svcfwd.ServerStats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var is svcfwd.IngressStats
	var ss svcfwd.ServerStats
	if f.in != nil {
		is = f.in.Stats()
	}
	if f.srv != nil {
		ss = f.srv.Stats()
	}
	return is, ss
}

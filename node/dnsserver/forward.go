package dnsserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// forward relays r to the upstreams in order and writes what the first one
// that answers says. The query goes out unchanged: same id, same OPT (so
// the client's EDNS0 UDP size), UDP first and TCP when the answer is
// truncated. m is the prepared reply, used for SERVFAIL.
func (s *Server) forward(ctx context.Context, w dns.ResponseWriter, r, m *dns.Msg, opt *dns.OPT) {
	s.stats.forwarded.Add(1)
	resp, err := s.exchange(ctx, r)
	if err != nil {
		s.log.Debug("dns forward failed", "name", r.Question[0].Name, "err", err)
		m.Rcode = dns.RcodeServerFailure
		s.write(w, m)
		return
	}
	resp.Id = r.Id
	if isUDP(w) {
		// An answer fetched over TCP may exceed what the client takes;
		// Truncate sets TC so it retries over TCP with us.
		resp.Truncate(udpSize(opt))
	}
	s.write(w, resp)
}

// exchange tries each upstream in turn. A truncated UDP answer is kept as
// a last resort in case no upstream answers over TCP.
func (s *Server) exchange(ctx context.Context, r *dns.Msg) (*dns.Msg, error) {
	if len(s.upstreams) == 0 {
		return nil, errNoUpstream
	}
	var truncated *dns.Msg
	var lastErr error
	for _, u := range s.upstreams {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		resp, err := s.exchangeOne(ctx, s.udp, r, u)
		if err == nil && resp.Truncated {
			truncated = resp
			resp, err = s.exchangeOne(ctx, s.tcp, r, u)
		}
		if err != nil {
			s.stats.upstreamErrors.Add(1)
			lastErr = fmt.Errorf("upstream %s: %w", u, err)
			continue
		}
		return resp, nil
	}
	if truncated != nil {
		return truncated, nil
	}
	return nil, lastErr
}

func (s *Server) exchangeOne(ctx context.Context, c *dns.Client, r *dns.Msg, upstream string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	co, err := c.DialContext(ctx, upstream)
	if err != nil {
		return nil, err
	}
	defer co.Close()
	// The client only turns ctx's deadline into socket deadlines; closing
	// the socket is what makes a cancel (Run ending) interrupt a read.
	stop := context.AfterFunc(ctx, func() { co.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, r, co)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, err
	}
	return resp, nil
}

// ParseResolvConf returns the nameservers (port 53) of a resolv.conf, in
// order. Other options are ignored; a nameserver line whose address does
// not parse is an error, so a broken file is noticed rather than half-used.
func ParseResolvConf(r io.Reader) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if i := strings.IndexAny(text, "#;"); i >= 0 {
			text = text[:i]
		}
		f := strings.Fields(text)
		if len(f) == 0 || f[0] != "nameserver" {
			continue
		}
		if len(f) < 2 {
			return nil, fmt.Errorf("resolv.conf line %d: nameserver without an address", line)
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("resolv.conf line %d: nameserver %q: %w", line, f[1], err)
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read resolv.conf: %w", err)
	}
	return out, nil
}

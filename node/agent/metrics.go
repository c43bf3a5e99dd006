package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgewire/edgewire/node/svcpath"

	"github.com/edgewire/edgewire/dataplane/inflight"
	"github.com/edgewire/edgewire/dataplane/wgdev"
	"github.com/edgewire/edgewire/internal/telemetry"
	"github.com/edgewire/edgewire/types/key"
)

// registerMetrics exposes the agent's state on reg. Everything is read at
// scrape time from the parts that own it. Series per peer are in
// peermetrics.go.
func (a *Agent) registerMetrics(reg prometheus.Registerer) {
	reg.MustRegister(newPeerMetrics(a.cfg.MetricsPerPeer, time.Now, a.peerViews, func() (map[key.Public]wgdev.PeerStats, error) { return a.dev.Stats() }))
	telemetry.Labelled(reg, "edgewire_agent_ice_sessions_total", "ICE sessions by outcome.", prometheus.CounterValue, []string{"event"},
		func(emit func(float64, ...string)) {
			c := a.trav.Counters()
			emit(float64(c.Attempts), "attempt")
			emit(float64(c.Successes), "success")
			emit(float64(c.Failures), "failure")
			emit(float64(c.Restarts), "restart")
		})
	telemetry.Labelled(reg, "edgewire_agent_signals_total", "ICE signalling messages.", prometheus.CounterValue, []string{"event"},
		func(emit func(float64, ...string)) {
			c := a.trav.Counters()
			emit(float64(c.SignalsIn), "received")
			emit(float64(c.SignalsOut), "sent")
			emit(float64(c.SignalsDropped), "dropped")
			emit(float64(c.SignalsHeld), "held")
		})
	telemetry.Labelled(reg, "edgewire_agent_socket_packets_total", "Datagrams on the shared socket and the relay by kind.", prometheus.CounterValue, []string{"kind"},
		func(emit func(float64, ...string)) {
			c := &a.bind.C
			emit(float64(c.STUNIn.Load()), "stun_in")
			emit(float64(c.STUNOut.Load()), "stun_out")
			emit(float64(c.STUNDropped.Load()), "stun_dropped")
			emit(float64(c.OtherDrop.Load()), "other_dropped")
			emit(float64(c.SplitDrop.Load()), "split_dropped")
			emit(float64(c.RelayIn.Load()), "relay_in")
			emit(float64(c.RelayOut.Load()), "relay_out")
			emit(float64(c.RelayDropped.Load()), "relay_dropped")
		})
	if lim := a.dev.Inflight(); lim != nil {
		telemetry.GaugeFunc(reg, "edgewire_agent_inflight_limit_packets", "Bound on the packets the WireGuard device holds each way (--max-inflight-packets).",
			func() float64 { return float64(lim.Max()) })
		telemetry.Labelled(reg, "edgewire_agent_inflight_packets", "Packets the WireGuard device holds between taking them in and handing them on.", prometheus.GaugeValue, []string{"direction"},
			func(emit func(float64, ...string)) {
				s := lim.Stats()
				emit(float64(s.Held[inflight.In]), "in")
				emit(float64(s.Held[inflight.Out]), "out")
			})
		telemetry.Labelled(reg, "edgewire_agent_inflight_wait_seconds_total", "Time reads from the socket (in) or the interface (out) waited for the device to hand packets on: the bound at work.", prometheus.CounterValue, []string{"direction"},
			func(emit func(float64, ...string)) {
				s := lim.Stats()
				emit(s.Waited[inflight.In].Seconds(), "in")
				emit(s.Waited[inflight.Out].Seconds(), "out")
			})
	}
	telemetry.GaugeFunc(reg, "edgewire_agent_relay_connected", "1 when the home relay connection is up.", func() float64 {
		if a.home.Status().Connected {
			return 1
		}
		return 0
	})
	telemetry.GaugeFunc(reg, "edgewire_agent_coordinator_connected", "1 when the coordinator stream is up.", func() float64 {
		if a.cc.Connected() {
			return 1
		}
		return 0
	})
	telemetry.Labelled(reg, "edgewire_agent_dns_queries_total", "DNS queries answered, by response code.", prometheus.CounterValue, []string{"rcode"},
		func(emit func(float64, ...string)) {
			if a.svc == nil || a.svc.dns == nil {
				return
			}
			for rc, n := range a.svc.dns.Stats().Rcodes {
				emit(float64(n), rc)
			}
		})
	telemetry.Labelled(reg, "edgewire_agent_dns_answers_total", "DNS queries by how they were answered.", prometheus.CounterValue, []string{"kind"},
		func(emit func(float64, ...string)) {
			if a.svc == nil || a.svc.dns == nil {
				return
			}
			st := a.svc.dns.Stats()
			emit(float64(st.Local), "local")
			emit(float64(st.Forwarded), "forwarded")
			emit(float64(st.Rejected), "rejected")
			emit(float64(st.UpstreamErrors), "upstream_error")
			emit(float64(st.RefusedSource), "refused_source")
			emit(float64(st.RateLimited), "rate_limited")
			emit(float64(st.Overloaded), "overloaded")
			emit(float64(st.Loops), "loop")
			emit(float64(st.Coalesced), "coalesced")
		})
	telemetry.GaugeFunc(reg, "edgewire_agent_service_rules_apply_seconds", "Duration of the last Service rule apply.", func() float64 {
		if a.svc == nil || a.svc.proxy == nil {
			return 0
		}
		return a.svc.proxy.Stats().LastApplyDuration.Seconds()
	})
	telemetry.Labelled(reg, "edgewire_agent_service_rule_applies_total", "Service rule applies by outcome.", prometheus.CounterValue, []string{"outcome"},
		func(emit func(float64, ...string)) {
			if a.svc == nil || a.svc.proxy == nil {
				return
			}
			st := a.svc.proxy.Stats()
			emit(float64(st.Applies), "applied")
			emit(float64(st.Skipped), "unchanged")
			emit(float64(st.Errors), "error")
		})
	telemetry.Labelled(reg, "edgewire_agent_service_endpoints", "Service endpoints by how this node reaches them (none: left out; see `edgewire services`).", prometheus.GaugeValue, []string{"path"},
		func(emit func(float64, ...string)) {
			if a.svc == nil {
				return
			}
			a.svc.mu.Lock()
			n := svcpath.Count(a.svc.decisions)
			a.svc.mu.Unlock()
			for p, c := range n {
				emit(float64(c), string(p))
			}
		})
	telemetry.Labelled(reg, "edgewire_agent_service_forwards_total", "Node-forwarded Service connections and UDP flows, by direction and outcome.", prometheus.CounterValue, []string{"direction", "outcome"},
		func(emit func(float64, ...string)) {
			if a.svc == nil || a.svc.fwd == nil {
				return
			}
			is, ss := a.svc.fwd.stats()
			emit(float64(is.TCP+is.UDP), "out", "forwarded")
			emit(float64(is.Failed), "out", "failed")
			emit(float64(is.NotLocal), "out", "not_local")
			emit(float64(is.Dropped), "out", "dropped_datagram")
			emit(float64(ss.TCP+ss.UDP), "in", "forwarded")
			emit(float64(ss.Refused), "in", "refused")
			emit(float64(ss.DialFailed), "in", "no_answer")
			emit(float64(ss.Busy), "in", "busy")
		})
	telemetry.CounterFunc(reg, "edgewire_agent_socks5_connections_total", "Connections proxied by the SOCKS5 proxy.", func() float64 {
		if a.svc == nil || a.svc.socks == nil {
			return 0
		}
		return float64(a.svc.socks.Connections())
	})
	telemetry.CounterFunc(reg, "edgewire_agent_socks5_refused_total", "Connections to the SOCKS5 proxy from clients that are not local, closed.", func() float64 {
		if a.svc == nil || a.svc.socks == nil {
			return 0
		}
		return float64(a.svc.socks.Refused())
	})
	telemetry.GaugeFunc(reg, "edgewire_agent_map_version", "Network map version held.", func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return float64(a.state.Version)
	})
}

// peerViews returns what the peer metrics need of every peer in the map.
func (a *Agent) peerViews() map[key.Public]peerView {
	states := a.trav.States()
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[key.Public]peerView, len(a.state.Peers))
	for k, p := range a.state.Peers {
		st := states[k]
		out[k] = peerView{Name: p.Name, Online: p.Online, Path: st.Kind, ICE: st.ICE}
	}
	return out
}

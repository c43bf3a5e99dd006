package server

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgewire/edgewire/internal/telemetry"
)

// metrics are the server's instruments; registered by RegisterMetrics.
type metrics struct {
	joins          atomic.Uint64
	joinsRefused   atomic.Uint64
	updates        atomic.Uint64
	updatesRefused atomic.Uint64
	reportsBad     atomic.Uint64
	storeRejects   atomic.Uint64
	streams        atomic.Int64
	sigForwarded   atomic.Uint64
	sigDropped     atomic.Uint64
	sigHeld        atomic.Uint64
	fullMaps       atomic.Uint64
	currentMaps    atomic.Uint64
	patchMaps      atomic.Uint64
	presenceErrs   atomic.Uint64
	fanout         prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{fanout: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "edgewire_coordinator_fanout_seconds",
		Help:    "Time from a change in the network to its delta being sent on a stream.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})}
}

// RegisterMetrics exposes the coordinator's state and counters on reg.
func (s *Server) RegisterMetrics(reg prometheus.Registerer) {
	m := s.m
	reg.MustRegister(m.fanout)
	telemetry.CounterFunc(reg, "edgewire_coordinator_joins_total", "Successful joins.", func() float64 { return float64(m.joins.Load()) })
	telemetry.CounterFunc(reg, "edgewire_coordinator_joins_refused_total", "Refused joins (bad token, name taken, bad input).", func() float64 { return float64(m.joinsRefused.Load()) })
	telemetry.CounterFunc(reg, "edgewire_coordinator_updates_total", "Nodes' changes of their own name, routes or hostname (Update).", func() float64 { return float64(m.updates.Load()) })
	telemetry.CounterFunc(reg, "edgewire_coordinator_updates_refused_total", "Refused updates (name taken, bad routes, not registered).", func() float64 { return float64(m.updatesRefused.Load()) })
	telemetry.CounterFunc(reg, "edgewire_coordinator_stored_nodes_rejected_total", "Stored nodes not loaded because they conflict with another (an address held twice).", func() float64 { return float64(m.storeRejects.Load()) })
	telemetry.GaugeFunc(reg, "edgewire_coordinator_streams", "Authenticated agent streams.", func() float64 { return float64(m.streams.Load()) })
	telemetry.CounterFunc(reg, "edgewire_coordinator_signals_forwarded_total", "Sealed signals forwarded between nodes.", func() float64 { return float64(m.sigForwarded.Load()) })
	telemetry.CounterFunc(reg, "edgewire_coordinator_signals_held_total", "Signals held for a node not connected, delivered if it connects within 8 s.", func() float64 { return float64(m.sigHeld.Load()) })
	telemetry.CounterFunc(reg, "edgewire_coordinator_signals_dropped_total", "Signals dropped (malformed, rate limited, recipient away).", func() float64 { return float64(m.sigDropped.Load()) })
	telemetry.Labelled(reg, "edgewire_coordinator_first_maps_total", "First network maps sent on new streams: full; current (the agent already held this map: it reconnected to another replica or after a restart); or patch (it held this map but for a few node buckets).", prometheus.CounterValue, []string{"kind"},
		func(emit func(float64, ...string)) {
			emit(float64(m.fullMaps.Load()), "full")
			emit(float64(m.currentMaps.Load()), "current")
			emit(float64(m.patchMaps.Load()), "patch")
		})
	telemetry.CounterFunc(reg, "edgewire_coordinator_presence_save_errors_total", "Failed saves of the fleet's presence (for the next coordinator to start from).", func() float64 { return float64(m.presenceErrs.Load()) })
	telemetry.GaugeFunc(reg, "edgewire_coordinator_map_version", "Current network map version.", func() float64 { return float64(s.reg.Version()) })
	telemetry.GaugeFunc(reg, "edgewire_coordinator_services", "Services in the Service map.", func() float64 { return float64(s.reg.Services()) })
	telemetry.Labelled(reg, "edgewire_coordinator_nodes", "Registered nodes by presence.", prometheus.GaugeValue, []string{"state"},
		func(emit func(float64, ...string)) {
			online, total := 0, 0
			for _, n := range s.reg.Nodes() {
				total++
				if n.GetOnline() {
					online++
				}
			}
			emit(float64(online), "online")
			emit(float64(total-online), "offline")
		})
	telemetry.Labelled(reg, "edgewire_coordinator_path_reports_total", "Agents' path reports: taken, dropped for coming too often, or bad.", prometheus.CounterValue, []string{"result"},
		func(emit func(float64, ...string)) {
			got, dropped := s.topo.Counts()
			emit(float64(got), "taken")
			emit(float64(dropped), "too_often")
			emit(float64(m.reportsBad.Load()), "bad")
		})
	// The fleet's paths: one view per scrape, both families from it.
	pairs := prometheus.NewDesc("edgewire_coordinator_pairs", "Active node pairs by path (direct, relay, none), from the agents' path reports.", []string{"path"}, nil)
	kinds := prometheus.NewDesc("edgewire_coordinator_nodes_by_nat", "Nodes by NAT kind from their netcheck: none (public), eim, symmetric, blocked (no UDP), unknown.", []string{"kind"}, nil)
	reg.MustRegister(telemetry.Collector([]*prometheus.Desc{pairs, kinds}, func(ch chan<- prometheus.Metric) {
		v := s.TopologyView()
		c := v.Summary.Pairs
		for path, n := range map[string]int{"direct": c.Direct, "relay": c.Relay, "none": c.None} {
			ch <- prometheus.MustNewConstMetric(pairs, prometheus.GaugeValue, float64(n), path)
		}
		for _, k := range v.Summary.NATKinds {
			ch <- prometheus.MustNewConstMetric(kinds, prometheus.GaugeValue, float64(k.Nodes), k.Kind)
		}
	}))
}

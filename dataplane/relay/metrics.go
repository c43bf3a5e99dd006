package relay

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgewire/edgewire/internal/telemetry"
)

// RegisterMetrics exposes the relay's counters on reg.
func (s *Server) RegisterMetrics(reg prometheus.Registerer) {
	telemetry.GaugeFunc(reg, "edgewire_relay_clients", "Nodes connected to this relay.", func() float64 { return float64(s.Stats().Clients) })
	telemetry.GaugeFunc(reg, "edgewire_relay_mesh_links", "Outbound mesh links up.", func() float64 { return float64(s.Stats().MeshLinks) })
	telemetry.GaugeFunc(reg, "edgewire_relay_pending_handshakes", "Connections in the handshake.", func() float64 { return float64(s.limits.pendingHandshakes()) })
	telemetry.GaugeFunc(reg, "edgewire_relay_queued_bytes", "Memory held by queued packets (bounded by the queue budget).", func() float64 { return float64(s.budget.used.Load()) })
	telemetry.CounterFunc(reg, "edgewire_relay_packets_received_total", "Packets received from clients and mesh peers.", func() float64 { return float64(s.packetsIn.Load()) })
	telemetry.CounterFunc(reg, "edgewire_relay_packets_sent_total", "Packets delivered to clients and mesh peers.", func() float64 { return float64(s.packetsOut.Load()) })
	telemetry.CounterFunc(reg, "edgewire_relay_bytes_received_total", "Payload bytes received.", func() float64 { return float64(s.bytesIn.Load()) })
	telemetry.CounterFunc(reg, "edgewire_relay_bytes_sent_total", "Payload bytes delivered.", func() float64 { return float64(s.bytesOut.Load()) })
	telemetry.CounterFunc(reg, "edgewire_relay_refused_total", "Connections refused in the handshake.", func() float64 { return float64(s.refused.Load()) })
	telemetry.Labelled(reg, "edgewire_relay_drops_total", "Packets dropped, by reason.", prometheus.CounterValue, []string{"reason"},
		func(emit func(float64, ...string)) {
			for i := range s.drops {
				emit(float64(s.dropCount(i)), dropNames[i])
			}
		})
}

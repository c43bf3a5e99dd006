package coordinator

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgewire/edgewire/coordinator/server"
	"github.com/edgewire/edgewire/coordinator/topoweb"
	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/internal/telemetry"
	"github.com/edgewire/edgewire/types/topoview"
)

// topologyViews is the topology page's source: the server that runs, if
// any (a replica has one only while it leads).
type topologyViews struct{ srv atomic.Pointer[server.Server] }

func (v *topologyViews) view() (topoview.View, error) {
	s := v.srv.Load()
	if s == nil {
		return topoview.View{}, fmt.Errorf("%w: this coordinator does not serve agents now (a standby replica, or starting)", topoweb.ErrNoView)
	}
	return s.TopologyView(), nil
}

// topologyPage is the topology page (coordinator/topoweb) as handlers for
// the metrics listener: open from loopback, with the admin token (which
// it checks against the token file's hash) from anywhere else.
func topologyPage(cfg Config, views *topologyViews) ([]telemetry.Option, error) {
	if cfg.MetricsListen == "" {
		return nil, nil
	}
	hash, err := adminToken(filepath.Join(cfg.DataDir, AdminTokenFile))
	if err != nil {
		return nil, err
	}
	h, err := topoweb.New(topoweb.Config{View: views.view, AdminHash: hash, Logger: cfg.Logger.With("src", "topology page")})
	if err != nil {
		return nil, err
	}
	var opts []telemetry.Option
	for _, p := range topoweb.Paths {
		opts = append(opts, telemetry.Handle(p, h))
	}
	return opts, nil
}

// relayStats reads the embedded relay's counters for the topology view;
// the rate is over the time since the previous read (at least a second
// apart, so a page and a script polling together do not make it noise).
type relayStats struct {
	srv *relay.Server
	id  uint32

	mu       sync.Mutex // guards the previous read and the rate
	at       time.Time
	bytesOut uint64
	rate     float64
}

func (r *relayStats) stats(region uint32) *topoview.RelayStats {
	if r == nil || region != r.id {
		return nil
	}
	st := r.srv.Stats()
	out := &topoview.RelayStats{Clients: st.Clients, BytesTotal: st.BytesOut}
	for _, n := range st.Drops {
		out.DroppedTotal += n
	}
	now := time.Now()
	r.mu.Lock()
	if d := now.Sub(r.at); r.at.IsZero() || d >= time.Second {
		if !r.at.IsZero() && st.BytesOut >= r.bytesOut {
			r.rate = float64(st.BytesOut-r.bytesOut) / d.Seconds()
		}
		r.at, r.bytesOut = now, st.BytesOut
	}
	out.BytesPerSec = r.rate
	r.mu.Unlock()
	return out
}

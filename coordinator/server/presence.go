package server

import (
	"context"
	"time"

	"github.com/edgewire/edgewire/coordinator/store"
)

const (
	defaultPresenceInterval = 5 * time.Second
	defaultPresenceGrace    = 30 * time.Second
	defaultPresenceMaxAge   = 2 * time.Minute
	// presenceRefresh is how often presence is saved when nothing
	// changed, so a save is never older than this plus an interval.
	presenceRefresh = 30 * time.Second
	// finalSaveTimeout bounds the save when the server stops.
	finalSaveTimeout = 3 * time.Second
)

// carryPresence starts the registry from the presence the previous
// coordinator saved, if the store keeps one and it is recent: those nodes
// stay online, with the endpoints saved, while they reconnect, so the
// map agents get is the one they hold and a reconnecting fleet is told
// its maps are current instead of fetching a full map each. A failed or
// stale load only costs those full maps.
func (s *Server) carryPresence(ctx context.Context) {
	pk, ok := s.cfg.Store.(store.PresenceKeeper)
	if !ok {
		return
	}
	p, at, err := pk.LoadPresence(ctx)
	now := s.clk.Now()
	switch {
	case err != nil:
		s.log.Warn("not carrying over the fleet's presence: cannot load it; agents get full maps", "err", err)
		return
	case len(p) == 0:
		return
	case now.Sub(at) > s.cfg.PresenceMaxAge:
		s.log.Info("not carrying over the fleet's presence: saved too long ago", "saved", at, "max_age", s.cfg.PresenceMaxAge)
		return
	}
	s.reg.Carry(p, now.Add(s.cfg.PresenceGrace))
	s.log.Info("carrying over the fleet's presence", "online", len(p), "saved", at, "grace", s.cfg.PresenceGrace)
}

// KeepPresence saves the fleet's presence every PresenceInterval while
// it changes, and every presenceRefresh when it does not, until ctx ends;
// then once more, as it was when the server began to stop (streams the
// stop ends do not count as disconnections), so a coordinator stopped on
// purpose (a rolling update, a restart) hands the next one the fleet
// exactly as its agents hold it. ctx should be the context given to New.
// It returns nil at once if the store does not keep presence.
func (s *Server) KeepPresence(ctx context.Context) error {
	pk, ok := s.cfg.Store.(store.PresenceKeeper)
	if !ok {
		return nil
	}
	t := s.clk.NewTimer(s.cfg.PresenceInterval)
	defer t.Stop()
	var gen uint64
	var last time.Time // zero: save at the first tick, replacing what the last coordinator left
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalSaveTimeout)
			defer cancel()
			s.savePresence(fctx, pk, s.clk.Now())
			return nil
		case <-t.C():
			t.Reset(s.cfg.PresenceInterval)
		}
		now := s.clk.Now()
		if s.reg.PresenceGen() == gen && now.Sub(last) < presenceRefresh {
			continue
		}
		if g, err := s.savePresence(ctx, pk, now); err == nil {
			gen, last = g, now
		} // else gen unchanged: try again at the next tick
	}
}

// savePresence saves the presence now and returns its generation.
func (s *Server) savePresence(ctx context.Context, pk store.PresenceKeeper, now time.Time) (uint64, error) {
	p, g := s.reg.Presence()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.PresenceInterval)
	defer cancel()
	if err := pk.SavePresence(ctx, p, now); err != nil {
		s.m.presenceErrs.Add(1)
		s.log.Warn("save the fleet's presence", "err", err)
		return 0, err
	}
	return g, nil
}

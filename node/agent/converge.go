package agent

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/edgewire/edgewire/node/control"
	"github.com/edgewire/edgewire/node/identity"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

// The agent's flags are its desired state on every start, not only at its
// join: a node started with another --name, --advertise-routes or
// --coordinator than it registered with asks the coordinator to change
// its registration (control.Update, with a join's checks) before it runs.
// A setting that was not given keeps what is registered. A change the
// coordinator refuses stops the agent with the reason; one it cannot ask
// about yet (coordinator unreachable) is asked again in the background
// while the agent runs on what is registered.

// changes is what the configuration asks for that the enrolment lacks.
type changes struct {
	name, routes, coordinator bool
}

func (c changes) any() bool { return c.name || c.routes || c.coordinator }

func (c changes) String() string {
	var s []string
	if c.name {
		s = append(s, "--name")
	}
	if c.routes {
		s = append(s, "--advertise-routes")
	}
	if c.coordinator {
		s = append(s, "--coordinator")
	}
	return strings.Join(s, ", ")
}

// wants compares the configuration with the enrolment.
func (c *Config) wants(e identity.Enrolment, hostname string) changes {
	var w changes
	if c.SetName {
		want := c.Name
		if want == "" {
			want = hostname
		}
		w.name = want != e.Name
	}
	if c.SetRoutes {
		w.routes = e.Advertised == nil || !sameSet(e.Advertised, control.RouteStrings(c.Routes))
	}
	if c.Coordinator != "" {
		want, _ := control.Addrs(c.Coordinator)
		have, _ := control.Addrs(e.Coordinator)
		w.coordinator = !slices.Equal(want, have)
	}
	return w
}

func sameSet(a, b []string) bool {
	return len(a) == len(b) && !slices.ContainsFunc(a, func(s string) bool { return !slices.Contains(b, s) })
}

// updateTimeout bounds the update asked at start: an unreachable
// coordinator must not keep the data plane down for long.
const updateTimeout = 5 * time.Second

// errPendingUpdate: the update could not be asked yet; the agent runs on
// what is registered and asks again in the background.
var errPendingUpdate = errors.New("registration update pending")

// updateRegistration asks the coordinator for the changes w and saves the
// enrolment it answers with. It returns errPendingUpdate (with the
// enrolment to run with: the desired coordinator, the registered rest)
// when the coordinator could not be asked, and an error saying what to
// do when it refused.
func updateRegistration(ctx context.Context, cfg Config, enr identity.Enrolment, w changes, nk key.Private, host Host, hostname string, log *slog.Logger) (identity.Enrolment, error) {
	resp, err := control.Update(ctx, control.UpdateRequest{
		Enrolment: enr, Coordinator: cfg.Coordinator, PrivateKey: nk,
		SetName: w.name, Name: cfg.Name, SetRoutes: w.routes, Routes: cfg.Routes, Hostname: hostname,
		Dial: JoinConfig{Host: host}.dial(),
	})
	switch {
	case errors.Is(err, control.ErrOtherCA):
		return enr, fmt.Errorf("%w. This node is enrolled with %s; to keep it there, drop --coordinator or set it to that address; to move it to the other overlay, give a join token of that overlay (--token-file)", err, enr.Coordinator)
	case errors.Is(err, control.ErrRefused):
		return enr, fmt.Errorf("this node's new settings (%s) were %w. The node stays registered as %q with routes %v: change the flags back, or fix what the message says", w, err, enr.Name, enr.Advertised)
	case err != nil:
		if cfg.Coordinator != "" {
			enr.Coordinator = cfg.Coordinator
		}
		return enr, fmt.Errorf("%w: %v", errPendingUpdate, err)
	}
	was := enr
	enr.Name = resp.GetSelf().GetName()
	if w.routes {
		enr.Advertised = control.RouteStrings(cfg.Routes)
	}
	if cfg.Coordinator != "" {
		enr.Coordinator = cfg.Coordinator
	}
	if err := identity.SaveEnrolment(cfg.StateDir, enr); err != nil {
		return enr, fmt.Errorf("save enrolment: %w", err)
	}
	log.Info("registration updated", "changed", w.String(), "name", enr.Name, "was", was.Name,
		"routes", resp.GetSelf().GetRoutes(), "coordinator", enr.Coordinator)
	if p := resp.GetPendingRoutes(); len(p) > 0 {
		log.Warn("advertised routes wait for an admin's approval", "routes", p, "approve", "edgewire nodes routes approve "+enr.Name)
	}
	return enr, nil
}

// updateLoop asks for a pending update until the coordinator answers it,
// with backoff; a refusal is logged and ends it.
func (a *Agent) updateLoop(ctx context.Context, enr identity.Enrolment, w changes, hostname string) error {
	backoff := 2 * time.Second
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		uctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		_, err := updateRegistration(uctx, a.cfg, enr, w, a.priv, a.host, hostname, a.log)
		cancel()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errPendingUpdate):
			a.log.Debug("registration update still pending", "err", err)
			backoff = min(backoff*2, time.Minute)
		default:
			a.log.Error("registration not updated; the node runs as registered", "err", err)
			return nil
		}
	}
}

// tokenForOtherOverlay reports whether the configured join token (if
// any) pins another CA than the enrolment's: the node is to re-join.
func tokenForOtherOverlay(cfg Config, enr identity.Enrolment) (bool, error) {
	tok := cfg.Token
	if tok == "" && cfg.TokenFile != "" {
		if _, err := os.Stat(cfg.TokenFile); errors.Is(err, os.ErrNotExist) {
			return false, nil // used up at the node's join
		}
		t, err := readSecretFile(cfg.TokenFile, "--token-file")
		if err != nil {
			return false, err
		}
		tok = t
	}
	if tok == "" {
		return false, nil
	}
	t, err := jointoken.Parse(tok)
	if err != nil {
		return false, err
	}
	blk, _ := pem.Decode([]byte(enr.CAPEM))
	if blk == nil {
		return false, errors.New("enrolment: no CA certificate")
	}
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return false, fmt.Errorf("enrolment CA: %w", err)
	}
	return jointoken.PinCert(ca) != t.CAPin, nil
}

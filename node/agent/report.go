package agent

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/node/pathsel"
)

// The agent tells the coordinator its paths (api.PathReport) for the
// fleet's topology view: which active peers it reaches directly and which
// through a relay, with the candidate types, RTT and the last ICE
// failure, plus its own NAT verdict and home relay. A report goes out
// when a stream opens, when what it says changes (looked at every
// reportTick, sent at most every reportMinGap) and every reportRefresh, so
// 10,000 nodes make a few dozen reports a second, not thousands.
const (
	reportTick    = 2 * time.Second
	reportMinGap  = 5 * time.Second
	reportRefresh = 5 * time.Minute
	// netcheckEvery: the NAT verdict in reports is measured this often,
	// and first when the first stream opens (the map names the STUN
	// servers by then).
	netcheckEvery = 10 * time.Minute
	// maxReportPeers bounds a report (the coordinator refuses more).
	maxReportPeers = 1024
)

// reportLoop sends path reports until ctx ends.
func (a *Agent) reportLoop(ctx context.Context) error {
	tick := time.NewTicker(reportTick)
	defer tick.Stop()
	check := time.NewTimer(netcheckEvery)
	defer check.Stop()
	var (
		nat      *api.NATReport
		lastSig  string
		lastSent time.Time
	)
	for {
		force := false
		select {
		case <-ctx.Done():
			return nil
		case <-a.reportNow:
			force = true
			if nat == nil {
				nat = a.natReport(ctx) // at most two rounds of 1.5 s
				check.Reset(netcheckEvery)
			}
		case <-check.C:
			nat = a.natReport(ctx)
			check.Reset(netcheckEvery)
		case <-tick.C:
		}
		r := a.pathReport(nat)
		sig := reportSignature(r)
		now := time.Now()
		due := force || sig != lastSig && now.Sub(lastSent) >= reportMinGap || now.Sub(lastSent) >= reportRefresh
		if due && a.cc.SendPathReport(r) {
			lastSig, lastSent = sig, now
		}
	}
}

// kickReport asks for a report now (a stream opened: the coordinator,
// maybe a new replica, knows nothing of this node's paths).
func (a *Agent) kickReport() {
	select {
	case a.reportNow <- struct{}{}:
	default:
	}
}

// pathReport builds the report from the map's peers and the traversal
// manager's view of them: what Status shows, without its WireGuard stats
// dump (a UAPI round trip every tick for counters the report leaves out).
func (a *Agent) pathReport(nat *api.NATReport) *api.PathReport {
	a.mu.Lock()
	peers := a.state.SortedPeers()
	a.mu.Unlock()
	r := &api.PathReport{Nat: nat}
	hs := a.home.Status()
	if hs.Connected {
		r.HomeRelay = hs.Home
		r.HomeRelayMs = float32(hs.Latency[hs.Home].Seconds() * 1000)
	}
	for _, p := range peers {
		ts, ok := a.trav.Status(p.Key)
		if !ok || !ts.Active || len(r.Peers) >= maxReportPeers {
			continue
		}
		pp := &api.PeerPath{PublicKey: p.Key[:], Path: ts.Path.Kind.String(), LastFailure: ts.LastFailure}
		if ts.Path.Kind == pathsel.Relay {
			pp.Relay = hs.Home
		}
		if ts.Local != nil && ts.Remote != nil {
			pp.LocalCandidate, pp.RemoteCandidate = ts.Local.Type, ts.Remote.Type
		}
		pp.RttMs = float32(ts.RTT.Seconds() * 1000)
		if !ts.PathSince.IsZero() {
			pp.SinceUnixMs = ts.PathSince.UnixMilli()
		}
		r.Peers = append(r.Peers, pp)
	}
	return r
}

// reportSignature is what counts as a change of a report: paths,
// candidates, failures, the NAT and the home relay; RTTs and latencies
// move all the time and ride along with the next report.
func reportSignature(r *api.PathReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%v|", r.GetHomeRelay(), r.GetNat())
	for _, p := range r.GetPeers() {
		fmt.Fprintf(&b, "%x %s %s %s %s %d %s;", p.GetPublicKey(), p.GetPath(), p.GetRelay(), p.GetLocalCandidate(), p.GetRemoteCandidate(), p.GetSinceUnixMs(), p.GetLastFailure())
	}
	return b.String()
}

// natReport measures the node's NAT (its netcheck) for the reports.
func (a *Agent) natReport(ctx context.Context) *api.NATReport {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, err := a.Netcheck(ctx)
	if err != nil {
		a.log.Debug("netcheck for the path report", "err", err)
		return nil
	}
	return &api.NATReport{Measured: true, Udp: nc.UDP, Mapping: nc.Mapping, NoNat: nc.NoNAT, PublicAddr: nc.PublicAddr}
}

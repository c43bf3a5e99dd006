//go:build bench

package bench

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/topology"
	"github.com/edgewire/edgewire/types/key"
	"github.com/edgewire/edgewire/types/topoview"
)

// The topology view's costs (issue 19): serving the view of a large fleet,
// taking path reports, and the map fan-out while reports flow.

// sendReport sends a path report with peers on n's stream, every peer
// direct with a host/srflx pair.
func (n *simNode) sendReport(peers []*simNode) error {
	r := &api.PathReport{HomeRelay: "coordinator", HomeRelayMs: 1.5,
		Nat: &api.NATReport{Measured: true, Udp: true, Mapping: "endpoint-independent", PublicAddr: "203.0.113.9"}}
	for _, p := range peers {
		r.Peers = append(r.Peers, &api.PeerPath{PublicKey: p.pub[:], Path: "direct", LocalCandidate: "srflx", RemoteCandidate: "srflx",
			RttMs: 3.5, SinceUnixMs: time.Now().Add(-time.Minute).UnixMilli()})
	}
	n.sendMu.Lock()
	defer n.sendMu.Unlock()
	return n.stream.SendMsg(&api.ClientMessage{Msg: &api.ClientMessage_Paths{Paths: r}})
}

// reportPeers are node i's 5 report peers in a fleet of nodes: its two
// neighbours on each side and the one opposite, so every node is in 5
// pairs reported from both ends.
func reportPeers(nodes []*simNode, i int) []*simNode {
	n := len(nodes)
	return []*simNode{nodes[(i+1)%n], nodes[(i+2)%n], nodes[(i+n-1)%n], nodes[(i+n-2)%n], nodes[(i+n/2)%n]}
}

// reporter sends path reports from nodes (round robin) at rate per
// second until stop is closed; sent counts them.
func reporter(nodes []*simNode, rate int, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i = (i + 1) % len(nodes) {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if nodes[i].sendReport(reportPeers(nodes, i)) == nil {
				sent.Add(1)
			}
		}
	})
	return &wg
}

// adminView fetches the coordinator's topology view over its admin
// socket: how long it took and the JSON.
func adminView(sock string) (time.Duration, []byte, error) {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t0 := time.Now()
	resp, err := api.NewAdminClient(conn).Topology(ctx, &api.TopologyRequest{})
	return time.Since(t0), resp.GetViewJson(), err
}

func gzipSize(b []byte) int {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Len()
}

// benchTopologyView measures, in process, the view of n nodes with 5
// active pairs each reported from both ends: build + JSON + gzip time and
// size, and the rate at which reports are parsed and stored.
func benchTopologyView(t *testing.T, rep *Report, n int) {
	sec := "Topology view (in process)"
	keys := make([]key.Public, n)
	nodes := make([]topology.NodeInfo, n)
	for i := range keys {
		keys[i] = key.Public{byte(i), byte(i >> 8), byte(i >> 16), 7}
		nodes[i] = topology.NodeInfo{Key: keys[i], Name: fmt.Sprintf("node-%05d", i), Addresses: []string{fmt.Sprintf("100.64.%d.%d", i/250, i%250+1)},
			Online: true, Version: "v1.2.3", Tags: []string{fmt.Sprintf("site-%d", i%20)}}
	}
	msgs := make([]*api.PathReport, n)
	for i := range msgs {
		r := &api.PathReport{HomeRelay: "fra", Nat: &api.NATReport{Measured: true, Udp: true, Mapping: "endpoint-independent", PublicAddr: "203.0.113.9"}}
		for _, j := range []int{(i + 1) % n, (i + 2) % n, (i + n - 1) % n, (i + n - 2) % n, (i + n/2) % n} {
			path := "direct"
			if j%7 == 0 {
				path = "relay"
			}
			r.Peers = append(r.Peers, &api.PeerPath{PublicKey: keys[j][:], Path: path, Relay: "fra", LocalCandidate: "srflx", RemoteCandidate: "host", RttMs: 4.2, SinceUnixMs: 1_800_000_000_000})
		}
		msgs[i] = r
	}
	s := topology.New()
	now := time.Unix(1_800_000_100, 0)
	t0 := time.Now()
	for i, m := range msgs {
		r, err := topology.Parse(keys[i], m, now)
		if err != nil {
			t.Fatal(err)
		}
		s.Put(keys[i], r)
	}
	rate := float64(n) / time.Since(t0).Seconds()
	var secs []float64
	var raw, gz int
	var pairs int
	for range 5 {
		t0 := time.Now()
		v := s.View(nodes, []topology.RelayInfo{{ID: 1, Name: "fra", Stats: &topoview.RelayStats{}}}, now)
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		gz = gzipSize(b)
		secs = append(secs, time.Since(t0).Seconds())
		raw, pairs = len(b), len(v.Pairs)
	}
	name := func(s string) string { return fmt.Sprintf("%d nodes, %d pairs: %s", n, pairs, s) }
	rep.Add(&Measure{Section: sec, Name: name("view built, encoded and gzipped"), Unit: "s", Edgewire: secs, Target: "≤ 1 s", Met: met(median(secs) <= 1)})
	rep.Add(&Measure{Section: sec, Name: name("view JSON gzipped"), Unit: "MB", Edgewire: []float64{float64(gz) / 1e6}, Target: "≤ 5 MB", Met: met(gz <= 5e6),
		Note: fmt.Sprintf("%.1f MB before gzip", float64(raw)/1e6)})
	rep.Add(&Measure{Section: sec, Name: "path reports parsed and stored (5 peers each, one goroutine)", Unit: "reports/s", Edgewire: []float64{rate},
		Target: "≥ 200/s", Met: met(rate >= 200)})
}

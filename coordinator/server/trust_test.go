package server

// Attacks on the coordinator by a token holder or an outsider (issue 12):
// each must fail and leave everything as it was.

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/internal/routeguard"
	"github.com/edgewire/edgewire/types/key"
)

// TestJoinWithAnotherNodesKey: every node's public key is in every map. A
// token holder who joins with a victim's key (to take its name, routes or
// tags) cannot prove the key, and the victim's registration is untouched.
func TestJoinWithAnotherNodesKey(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true, Routes: []string{"10.42.0.0/16"}})
	victim := newAgent(t)
	e.join(t, victim, "victim", tok, "10.42.7.0/24")
	before := e.snapshot(t)
	version := e.srv.Registry().Version()

	attacker := newAgent(t)
	for _, tc := range []struct {
		name  string
		proof func(ch *api.Challenge) *api.AuthProof
	}{
		{"no proof", func(*api.Challenge) *api.AuthProof { return &api.AuthProof{} }},
		{"attacker's own key's proof", func(ch *api.Challenge) *api.AuthProof {
			p, _ := api.Prove(attacker.priv, ch, api.AuthJoin, nil, nil)
			return p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			c, err := e.control.Join(ctx)
			if err != nil {
				t.Fatal(err)
			}
			c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Hello{Hello: hello(victim)}})
			m, err := c.Recv()
			if err != nil {
				t.Fatal(err)
			}
			c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Proof{Proof: tc.proof(m.GetChallenge())}})
			c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Join{Join: &api.JoinRequest{Token: tok, Name: "renamed", Routes: []string{"10.42.8.0/24"}}}})
			_, err = c.Recv()
			if code(err) != codes.Unauthenticated {
				t.Fatalf("join with the victim's key: got %v, want Unauthenticated", err)
			}
		})
	}
	if after := e.snapshot(t); !reflect.DeepEqual(after, before) {
		t.Errorf("the attack changed the store:\nbefore %+v\nafter  %+v", before, after)
	}
	if got := e.srv.Registry().Version(); got != version {
		t.Errorf("the attack moved the registry from version %d to %d", version, got)
	}
	// Its holder can still re-join (and keeps its address).
	if got := e.join(t, victim, "victim", tok, "10.42.7.0/24").Self.Addresses; !slices.Equal(got, []string{"100.64.0.1"}) {
		t.Errorf("victim's re-join: got addresses %v, want [100.64.0.1]", got)
	}
}

// TestJoinLowOrderKey: a low-order key would let anyone answer the
// challenge without a private key; Hello refuses it before a challenge.
func TestJoinLowOrderKey(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	_, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: lowOrderKey(), Name: "x"})
	if code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "low-order") {
		t.Errorf("got %v, want InvalidArgument about a low-order key", err)
	}
	if n := len(e.snapshot(t).Nodes); n != 0 {
		t.Errorf("got %d nodes, want none", n)
	}
}

// TestRouteAttacks: routes that would capture the coordinator, a relay,
// everyone's traffic or special ranges are refused outright; other routes
// are only routed when the token allows them or an admin approves them.
func TestRouteAttacks(t *testing.T) {
	coord := netip.MustParseAddr("203.0.113.10")
	e := newEnv(t, func(c *Config) {
		c.RoutePolicy = routeguard.Policy{Protected: []netip.Prefix{routeguard.Host(coord)}}
	})
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	refused := []struct {
		routes []string
		want   string
	}{
		{[]string{"203.0.113.10/32"}, "203.0.113.10"},
		{[]string{"203.0.113.0/24"}, "203.0.113.10"},
		{[]string{"128.0.0.0/1", "0.0.0.0/1"}, "special-purpose"},
		{[]string{"64.0.0.0/3"}, "broader than /8"},
		{[]string{"::/0"}, "special-purpose"},
		{[]string{"127.0.0.0/8"}, "loopback"},
		{[]string{"224.0.0.0/4"}, "multicast"},
		{[]string{"169.254.96.16/32"}, "link-local"},
		{[]string{"fe80::/64"}, "link-local"},
		{[]string{"100.64.0.0/24"}, "overlay"},
	}
	for _, tc := range refused {
		t.Run(strings.Join(tc.routes, ","), func(t *testing.T) {
			_, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: newAgent(t).key(), Name: "evil", Routes: tc.routes})
			if code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want InvalidArgument mentioning %q", err, tc.want)
			}
		})
	}
	if n := len(e.snapshot(t).Nodes); n != 0 {
		t.Fatalf("refused joins stored %d nodes", n)
	}

	// A plausible route without approval: the node joins, the route
	// waits, nobody routes it.
	a, b := newAgent(t), newAgent(t)
	resp := e.join(t, a, "a", tok, "192.168.1.0/24")
	if !slices.Equal(resp.PendingRoutes, []string{"192.168.1.0/24"}) || len(resp.Self.Routes) != 0 {
		t.Fatalf("join: got routes %v pending %v, want none and [192.168.1.0/24]", resp.Self.Routes, resp.PendingRoutes)
	}
	e.join(t, b, "b", tok)
	sb := e.connect(t, b)
	if pa := peerByName(sb.next(t), "a"); len(pa.GetRoutes()) != 0 {
		t.Errorf("peer a in b's map: got routes %v, want none before approval", pa.GetRoutes())
	}

	// The admin approves it: it is routed.
	ar, err := e.admin.ApproveRoutes(ctxT(t), &api.ApproveRoutesRequest{Name: "a", Approve: []string{"192.168.1.0/24"}})
	if err != nil {
		t.Fatalf("ApproveRoutes: %v", err)
	}
	if !slices.Equal(ar.GetNode().GetRoutes(), []string{"192.168.1.0/24"}) || len(ar.GetNode().GetPendingRoutes()) != 0 {
		t.Errorf("after approval: got %v", ar.GetNode())
	}
	sb.waitFor(t, "a's approved route", func(m *api.NetworkMap) bool {
		pa := peerByName(m, "a")
		return pa != nil && slices.Equal(pa.GetRoutes(), []string{"192.168.1.0/24"})
	})

	// Approval cannot route what the node did not advertise, nor clash.
	if _, err := e.admin.ApproveRoutes(ctxT(t), &api.ApproveRoutesRequest{Name: "a", Approve: []string{"192.168.2.0/24"}}); code(err) != codes.FailedPrecondition {
		t.Errorf("approving an unadvertised route: got %v, want FailedPrecondition", err)
	}
	e.join(t, newAgent(t), "c", tok, "192.168.1.128/25")
	if _, err := e.admin.ApproveRoutes(ctxT(t), &api.ApproveRoutesRequest{Name: "c", All: true}); code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "overlaps") {
		t.Errorf("approving a clashing route: got %v, want FailedPrecondition about an overlap", err)
	}
	if _, err := e.admin.ApproveRoutes(ctxT(t), &api.ApproveRoutesRequest{Name: "nobody", All: true}); code(err) != codes.NotFound {
		t.Errorf("approving for an unknown node: got %v, want NotFound", err)
	}

	// Withdrawn, it is gone again.
	if _, err := e.admin.ApproveRoutes(ctxT(t), &api.ApproveRoutesRequest{Name: "a", Withdraw: []string{"192.168.1.0/24"}}); err != nil {
		t.Fatalf("withdraw: %v", err)
	}
	sb.waitFor(t, "a without routes", func(m *api.NetworkMap) bool {
		pa := peerByName(m, "a")
		return pa != nil && len(pa.GetRoutes()) == 0
	})
}

// TestTokenRouteAllowList: routes inside the token's allow-list are
// approved at join; others wait.
func TestTokenRouteAllowList(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true, Routes: []string{"10.42.0.0/16"}})
	resp := e.join(t, newAgent(t), "a", tok, "10.42.3.0/24", "10.43.0.0/24")
	if !slices.Equal(resp.Self.Routes, []string{"10.42.3.0/24"}) || !slices.Equal(resp.PendingRoutes, []string{"10.43.0.0/24"}) {
		t.Errorf("got routes %v pending %v, want [10.42.3.0/24] and [10.43.0.0/24]", resp.Self.Routes, resp.PendingRoutes)
	}
	// A later node's allow-listed claim that clashes waits instead of
	// failing the join.
	resp = e.join(t, newAgent(t), "b", tok, "10.42.3.0/25")
	if len(resp.Self.Routes) != 0 || !slices.Equal(resp.PendingRoutes, []string{"10.42.3.0/25"}) {
		t.Errorf("clashing claim: got routes %v pending %v, want none and [10.42.3.0/25]", resp.Self.Routes, resp.PendingRoutes)
	}
	for _, bad := range [][]string{{"0.0.0.0/0"}, {"100.64.0.0/16"}, {"not a prefix"}} {
		if _, err := e.admin.CreateToken(ctxT(t), &api.CreateTokenRequest{Routes: bad}); code(err) != codes.InvalidArgument {
			t.Errorf("token with routes %v: got %v, want InvalidArgument", bad, err)
		}
	}
}

// fakeKube is a KubeVerifier with a fixed answer per token (the real one,
// a TokenReview against a real API server, is tested in e2e/kube).
type fakeKube map[string]string

func (f fakeKube) VerifyNode(_ context.Context, tok string) (string, error) {
	if n, ok := f[tok]; ok {
		return n, nil
	}
	return "", errors.New("not authenticated")
}

// TestKubernetesIdentity: pod CIDRs follow the verified Kubernetes Node,
// never a chosen name; a Kubernetes Node's name is reserved for it.
func TestKubernetesIdentity(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Kube = fakeKube{"sa-token-w1": "w1"} })
	reg := e.srv.Registry()
	if err := reg.SetKubeNode("w1", []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}); err != nil {
		t.Fatal(err)
	}
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})

	// Squatting the name of a Kubernetes node with a plain token.
	_, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: newAgent(t).key(), Name: "w1"})
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "belongs to a Kubernetes node") {
		t.Errorf("squatting w1: got %v, want PermissionDenied", err)
	}
	// A forged service account token.
	_, err = e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: newAgent(t).key(), KubernetesToken: "forged"})
	if code(err) != codes.PermissionDenied {
		t.Errorf("forged service account token: got %v, want PermissionDenied", err)
	}
	// The real node: its name and pod CIDR.
	real := newAgent(t)
	resp, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: real.key(), KubernetesToken: "sa-token-w1"})
	if err != nil {
		t.Fatalf("join of w1: %v", err)
	}
	if resp.Self.Name != "w1" || resp.Self.KubernetesNode != "w1" {
		t.Errorf("got self %q (kubernetes %q), want w1 (w1)", resp.Self.Name, resp.Self.KubernetesNode)
	}
	n, _, _ := reg.Node(key.Public(real.pub))
	if n.KubeNode != "w1" {
		t.Errorf("stored KubeNode %q, want w1", n.KubeNode)
	}
	for _, pn := range reg.Nodes() {
		if pn.Name == "w1" && !slices.Equal(pn.Routes, []string{"10.244.1.0/24"}) {
			t.Errorf("w1 routes: got %v, want [10.244.1.0/24]", pn.Routes)
		}
	}
	// Another key proving the same Kubernetes node (a second agent, or a
	// reinstall) needs an admin to delete the first.
	_, err = e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: newAgent(t).key(), Name: "w1-b", KubernetesToken: "sa-token-w1"})
	if code(err) != codes.AlreadyExists {
		t.Errorf("second key for w1: got %v, want AlreadyExists", err)
	}

	// A token the admin bound to a Kubernetes node (an edge host without
	// a service account): one use, that name only.
	if _, err := e.admin.CreateToken(ctxT(t), &api.CreateTokenRequest{KubernetesNode: "edge-1", Reusable: true}); code(err) != codes.InvalidArgument {
		t.Errorf("reusable bound token: got %v, want InvalidArgument", err)
	}
	bound := e.createToken(t, &api.CreateTokenRequest{KubernetesNode: "edge-1"})
	if _, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: bound, PublicKey: newAgent(t).key(), Name: "other"}); code(err) != codes.PermissionDenied {
		t.Errorf("bound token under another name: got %v, want PermissionDenied", err)
	}
	resp, err = e.joinReq(ctxT(t), &api.JoinRequest{Token: bound, PublicKey: newAgent(t).key()})
	if err != nil || resp.Self.Name != "edge-1" || resp.Self.KubernetesNode != "edge-1" {
		t.Errorf("join with the bound token: got %v, %v; want edge-1", resp.GetSelf(), err)
	}
}

// TestOneStreamPerKey: one node opening thousands of authenticated
// streams ends with one; the others are told they were replaced.
func TestOneStreamPerKey(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a := newAgent(t)
	e.join(t, a, "a", tok)
	const n = 3000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		replaced int
	)
	streams := make([]api.Control_ConnectClient, 0, n)
	for i := range n {
		c, err := e.control.Connect(ctx)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Hello{Hello: hello(a)}})
		m, err := c.Recv()
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Proof{Proof: a.prove(m.GetChallenge())}})
		streams = append(streams, c)
		wg.Go(func() {
			for {
				if _, err := c.Recv(); err != nil {
					if code(err) == codes.Aborted {
						mu.Lock()
						replaced++
						mu.Unlock()
					}
					return
				}
			}
		})
	}
	// All but the last end (replaced); the last lives on.
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		r := replaced
		mu.Unlock()
		if r == n-1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	got := replaced
	mu.Unlock()
	if got != n-1 {
		t.Errorf("got %d streams replaced, want %d", got, n-1)
	}
	if s := e.srv.m.streams.Load(); s != 1 {
		t.Errorf("got %d streams open at the server, want 1", s)
	}
	if _, online, _ := e.srv.Registry().Node(key.Public(a.pub)); !online {
		t.Error("node offline, want online through its last stream")
	}
	cancel()
	wg.Wait()
}

// TestFailureLimit: guessing token secrets (or probing token IDs) from
// one address runs into a limit; a well-behaved token is unaffected.
func TestFailureLimit(t *testing.T) {
	clk := clock.NewFake(time.Unix(1e9, 0))
	l := newFailureLimiter(1, 5, clk)
	for i := range 5 {
		if !l.allow("198.51.100.7") {
			t.Fatalf("attempt %d refused, want allowed within the burst", i)
		}
		l.fail("198.51.100.7", "token abc")
	}
	if l.allow("198.51.100.7") || l.allow("token abc") {
		t.Error("allowed after the burst of failures, want refused")
	}
	if !l.allow("198.51.100.8", "token other") {
		t.Error("another source and token refused, want allowed")
	}
	clk.Advance(2 * time.Second)
	if !l.allow("198.51.100.7") {
		t.Error("refused after the bucket refilled, want allowed")
	}

	// Through the server: wrong secrets for one token ID.
	e := newEnv(t, func(c *Config) { c.FailureBurst, c.FailureRate = 3, 1 })
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	parts := strings.Split(tok, ".")
	parts[2] = strings.Repeat("0", 32)
	wrong := strings.Join(parts, ".")
	for i := range 3 {
		if _, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: wrong, PublicKey: newAgent(t).key(), Name: fmt.Sprint("g", i)}); code(err) != codes.PermissionDenied {
			t.Fatalf("guess %d: got %v, want PermissionDenied", i, err)
		}
	}
	if _, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: wrong, PublicKey: newAgent(t).key(), Name: "g"}); code(err) != codes.ResourceExhausted {
		t.Errorf("guess after the burst: got %v, want ResourceExhausted", err)
	}
	e.clock.Advance(5 * time.Second)
	if _, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: newAgent(t).key(), Name: "ok"}); err != nil {
		t.Errorf("join with the right secret after the bucket refilled: %v", err)
	}
}

// TestRelayRevocationsInMap: a deleted node's tickets stay valid until
// they expire, so every relay must refuse it until then. Relays that are
// not meshed with the coordinator's hear it from the signed list every
// map carries (agents hand it to their relay).
func TestRelayRevocationsInMap(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.TicketKey, c.TicketTTL = priv, 10*time.Minute })
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a, gone1, gone2 := newAgent(t), newAgent(t), newAgent(t)
	e.join(t, a, "a", tok)
	e.join(t, gone1, "gone1", tok)
	e.join(t, gone2, "gone2", tok)
	sa := e.connect(t, a)
	sa.next(t)

	var last relay.Revocations
	for i, victim := range []*agent{gone1, gone2} {
		if _, err := e.admin.DeleteNode(ctxT(t), &api.DeleteNodeRequest{Name: fmt.Sprint("gone", i+1)}); err != nil {
			t.Fatal(err)
		}
		m := sa.waitFor(t, "a revocation list", func(m *api.NetworkMap) bool { return len(m.GetRelayRevocations()) > 0 })
		r, err := relay.VerifyRevocations(pub, m.GetRelayRevocations())
		if err != nil {
			t.Fatalf("list after deleting %d: %v", i+1, err)
		}
		if len(r.Entries) != i+1 {
			t.Fatalf("list after deleting %d: got %d entries, want %d", i+1, len(r.Entries), i+1)
		}
		var found bool
		for _, en := range r.Entries {
			if en.Node == victim.pub {
				found = true
				if want := e.clock.Now().Add(10 * time.Minute).Truncate(time.Second); !en.Until.Equal(want) {
					t.Errorf("refused until %v, want %v (the last ticket's expiry)", en.Until, want)
				}
			}
		}
		if !found {
			t.Errorf("list after deleting %d does not name it", i+1)
		}
		if i > 0 && !r.Issued.After(last.Issued) {
			t.Errorf("second list issued %v, want after the first (%v): relays ignore lists that are not newer", r.Issued, last.Issued)
		}
		last = r
	}
	// A stream that connects later gets the list in its full map.
	b := newAgent(t)
	e.join(t, b, "b", tok)
	if m := e.connect(t, b).next(t); len(m.GetRelayRevocations()) == 0 {
		t.Error("full map without the revocation list")
	}
}

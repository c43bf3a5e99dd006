package server

import (
	"context"
	"net/netip"
	"testing"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/internal/dhkey"
	"github.com/edgewire/edgewire/types/key"
)

// fuzzServer is a server for the validation fuzzers: one registered node
// (key 0x09...), the default route policy.
func fuzzServer(f *testing.F) *Server {
	st, err := store.OpenBolt(f.TempDir() + "/state.db")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	s, err := New(context.Background(), Config{Store: st, Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}})
	if err != nil {
		f.Fatal(err)
	}
	var k key.Public
	k[0] = 9
	s.reg.Upsert(store.Node{Key: k, Name: "known"})
	return s
}

// FuzzHello feeds Hello messages from the wire to the checks a stream's
// first message gets: whatever passes has a usable key and bounded
// fields; whatever fails says why in a gRPC status.
func FuzzHello(f *testing.F) {
	s := fuzzServer(f)
	good, _ := proto.Marshal(&api.Hello{PublicKey: make([]byte, 32), ProtocolVersion: api.ProtocolVersion_PROTOCOL_VERSION_1,
		Endpoints: []string{"192.0.2.1:51820"}, Hostname: "h"})
	f.Add(good, true)
	f.Add([]byte{0x0a, 0x20}, false)
	f.Add([]byte("\x10\x01\x1a\x0f192.0.2.1:51820"), true)
	f.Fuzz(func(t *testing.T, b []byte, connect bool) {
		var h api.Hello
		if proto.Unmarshal(b, &h) != nil {
			return
		}
		method := api.AuthJoin
		if connect {
			method = api.AuthConnect
		}
		nk, err := s.checkHello(&h, method)
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				t.Fatalf("error without a status: %v", err)
			}
			return
		}
		if dhkey.CheckPublic(nk) != nil {
			t.Fatalf("accepted a low-order key %x", nk)
		}
		if len(h.GetHostname()) > maxHostname || len(h.GetKubernetesToken()) > maxKubeToken {
			t.Fatal("accepted an oversize field")
		}
		if connect && len(h.GetEndpoints()) > defaultMaxEndpoints {
			t.Fatalf("accepted %d endpoints", len(h.GetEndpoints()))
		}
	})
}

// FuzzJoinRequest feeds JoinRequests from the wire to the join's form
// checks: whatever passes has only routes the policy allows, disjoint,
// and bounded strings.
func FuzzJoinRequest(f *testing.F) {
	s := fuzzServer(f)
	var nk key.Public
	nk[0] = 9
	for _, r := range []*api.JoinRequest{
		{Token: "ewt1.x", Name: "a", Hostname: "h", Routes: []string{"10.42.0.0/16", "192.168.1.0/24"}},
		{Routes: []string{"0.0.0.0/0"}},
		{Routes: []string{"128.0.0.0/1", "10.0.0.0/8"}, PublicKey: nk[:]},
		{Hostname: "a\x00b", KubernetesToken: "tok"},
	} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req api.JoinRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		in, err := s.checkJoin(context.Background(), nk, &req)
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				t.Fatalf("error without a status: %v", err)
			}
			return
		}
		if len(in.hostname) > maxHostname || len(in.routes) > maxRoutes {
			t.Fatal("accepted an oversize field")
		}
		for i, r := range in.routes {
			if err := s.policy.Check(r); err != nil {
				t.Fatalf("accepted route %s: %v", r, err)
			}
			for _, q := range in.routes[:i] {
				if q.Overlaps(r) {
					t.Fatalf("accepted overlapping routes %s and %s", q, r)
				}
			}
		}
	})
}

package server

import (
	"bytes"
	"context"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/types/key"
)

// updateVia runs the Update stream for a with a proof for method.
func updateVia(ctx context.Context, cl api.ControlClient, a *agent, method string, req *api.UpdateRequest) (*api.JoinResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c, err := cl.Update(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Hello{Hello: &api.Hello{PublicKey: a.key(), ProtocolVersion: api.ProtocolVersion_PROTOCOL_VERSION_1}}}); err != nil {
		return nil, err
	}
	m, err := c.Recv()
	if err != nil {
		return nil, err
	}
	proof, err := api.Prove(a.priv, m.GetChallenge(), method, nil, nil)
	if err != nil {
		return nil, err
	}
	if err := c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Proof{Proof: proof}}); err != nil {
		return nil, err
	}
	// A Send after the server ended the stream (a refused proof) fails
	// with io.EOF; Recv has the status.
	_ = c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Update{Update: req}})
	if m, err = c.Recv(); err != nil {
		return nil, err
	}
	return m.GetJoined(), nil
}

// A node changes its own name, routes and hostname with Update, with a
// join's checks and no token use; what it leaves unset stays; a refused
// update changes nothing.
func TestUpdate(t *testing.T) {
	type want struct {
		code    codes.Code
		name    string
		routes  []string // approved
		pending []string
		host    string
	}
	tests := []struct {
		name   string
		method string // of the proof; default api.AuthUpdate
		revoke bool   // the node's token is revoked first
		req    *api.UpdateRequest
		want   want
	}{
		{name: "rename", req: &api.UpdateRequest{SetName: true, Name: "a2"},
			want: want{name: "a2", routes: []string{"192.168.1.0/24"}, host: "a-host"}},
		{name: "default name is the hostname", req: &api.UpdateRequest{SetName: true, Hostname: "edge7"},
			want: want{name: "edge7", routes: []string{"192.168.1.0/24"}, host: "edge7"}},
		{name: "routes replaced, allowed approved, others pending", req: &api.UpdateRequest{SetRoutes: true, Routes: []string{"192.168.2.0/24", "172.20.0.0/16"}},
			want: want{name: "a", routes: []string{"192.168.2.0/24"}, pending: []string{"172.20.0.0/16"}, host: "a-host"}},
		{name: "routes cleared", req: &api.UpdateRequest{SetRoutes: true},
			want: want{name: "a", host: "a-host"}},
		{name: "hostname only", req: &api.UpdateRequest{Hostname: "new-host"},
			want: want{name: "a", routes: []string{"192.168.1.0/24"}, host: "new-host"}},
		{name: "revoked token approves no new route", revoke: true, req: &api.UpdateRequest{SetRoutes: true, Routes: []string{"192.168.1.0/24", "192.168.2.0/24"}},
			want: want{name: "a", routes: []string{"192.168.1.0/24"}, pending: []string{"192.168.2.0/24"}, host: "a-host"}},
		{name: "name taken", req: &api.UpdateRequest{SetName: true, Name: "b"}, want: want{code: codes.AlreadyExists}},
		{name: "bad name", req: &api.UpdateRequest{SetName: true, Name: "Not A Label"}, want: want{code: codes.InvalidArgument}},
		{name: "route clashes with another node", req: &api.UpdateRequest{SetRoutes: true, Routes: []string{"192.168.9.0/24"}},
			want: want{name: "a", pending: []string{"192.168.9.0/24"}, host: "a-host"}},
		{name: "route in the overlay", req: &api.UpdateRequest{SetRoutes: true, Routes: []string{"100.64.0.0/24"}}, want: want{code: codes.InvalidArgument}},
		{name: "host bits", req: &api.UpdateRequest{SetRoutes: true, Routes: []string{"192.168.2.1/24"}}, want: want{code: codes.InvalidArgument}},
		{name: "hostname not printable", req: &api.UpdateRequest{Hostname: "a\x00b"}, want: want{code: codes.InvalidArgument}},
		{name: "a join proof is no update proof", method: api.AuthJoin, req: &api.UpdateRequest{SetName: true, Name: "a2"}, want: want{code: codes.Unauthenticated}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			tok, err := e.admin.CreateToken(ctxT(t), &api.CreateTokenRequest{Reusable: true, Routes: []string{"192.168.0.0/20"}})
			if err != nil {
				t.Fatal(err)
			}
			a, b := newAgent(t), newAgent(t)
			e.join(t, a, "a", tok.Token, "192.168.1.0/24")
			e.join(t, b, "b", tok.Token, "192.168.9.0/24")
			if tt.revoke {
				if _, err := e.admin.RevokeToken(ctxT(t), &api.RevokeTokenRequest{Id: tok.Info.Id}); err != nil {
					t.Fatal(err)
				}
			}
			before := e.snapshot(t)
			method := tt.method
			if method == "" {
				method = api.AuthUpdate
			}
			resp, err := updateVia(ctxT(t), e.control, a, method, tt.req)
			if got := code(err); got != tt.want.code {
				t.Fatalf("Update: %v, want code %v", err, tt.want.code)
			}
			after := e.snapshot(t)
			if tt.want.code != codes.OK {
				if !snapshotsEqual(before, after) {
					t.Errorf("a refused update changed the store:\nbefore %+v\nafter  %+v", before, after)
				}
				return
			}
			self := resp.GetSelf()
			if self.GetName() != tt.want.name || !slices.Equal(self.GetRoutes(), tt.want.routes) || !slices.Equal(resp.GetPendingRoutes(), tt.want.pending) {
				t.Errorf("Update answered name %q routes %v pending %v, want %q %v %v",
					self.GetName(), self.GetRoutes(), resp.GetPendingRoutes(), tt.want.name, tt.want.routes, tt.want.pending)
			}
			n := nodeIn(t, after, a.pub)
			if n.Name != tt.want.name || n.Hostname != tt.want.host || !slices.Equal(prefixStrings(n.Routes), tt.want.routes) {
				t.Errorf("stored %q host %q routes %v, want %q %q %v", n.Name, n.Hostname, n.Routes, tt.want.name, tt.want.host, tt.want.routes)
			}
			if old := nodeIn(t, before, a.pub); !slices.Equal(old.Addresses, n.Addresses) || n.TokenID != old.TokenID {
				t.Errorf("update changed addresses %v -> %v or token %s -> %s", old.Addresses, n.Addresses, old.TokenID, n.TokenID)
			}
			for i := range after.Tokens {
				if after.Tokens[i].Uses != before.Tokens[i].Uses {
					t.Errorf("token %s uses %d -> %d: an update spends no use", after.Tokens[i].ID, before.Tokens[i].Uses, after.Tokens[i].Uses)
				}
			}
			// The registry (what maps are built from) has it too.
			if rn, _, ok := e.srv.reg.Node(a.pub); !ok || rn.Name != tt.want.name {
				t.Errorf("registry has %q (%v), want %q", rn.Name, ok, tt.want.name)
			}
		})
	}
}

// A key that is not registered cannot update.
func TestUpdateUnregistered(t *testing.T) {
	e := newEnv(t, nil)
	_, err := updateVia(ctxT(t), e.control, newAgent(t), api.AuthUpdate, &api.UpdateRequest{SetName: true, Name: "x"})
	if code(err) != codes.NotFound {
		t.Fatalf("Update of an unregistered key: %v, want NotFound", err)
	}
	if s := e.snapshot(t); len(s.Nodes) != 0 {
		t.Fatalf("store has nodes %v", s.Nodes)
	}
}

// Peers learn a rename from a map delta.
func TestUpdateReachesPeers(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a, b := newAgent(t), newAgent(t)
	e.join(t, a, "a", tok)
	e.join(t, b, "b", tok)
	sb := e.connect(t, b)
	sb.next(t)
	if _, err := updateVia(ctxT(t), e.control, a, api.AuthUpdate, &api.UpdateRequest{SetName: true, Name: "renamed"}); err != nil {
		t.Fatal(err)
	}
	sb.waitFor(t, "a renamed", func(m *api.NetworkMap) bool {
		for _, p := range m.GetPeers() {
			if bytes.Equal(p.GetPublicKey(), a.key()) && p.GetName() == "renamed" {
				return true
			}
		}
		return false
	})
}

func nodeIn(t *testing.T, s snapshot, k key.Public) store.Node {
	t.Helper()
	for _, n := range s.Nodes {
		if n.Key == k {
			return n
		}
	}
	t.Fatalf("node %s not stored", k)
	return store.Node{}
}

func snapshotsEqual(a, b snapshot) bool { return reflect.DeepEqual(a, b) }

func prefixStrings(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

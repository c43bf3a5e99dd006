package server

import (
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/edgewire/edgewire/api"
)

// Joins run concurrently (the store commits them in shared transactions):
// each gets its own address, refused ones change nothing, and the store,
// the registry and the token's use count agree afterwards.
func TestConcurrentJoins(t *testing.T) {
	tests := []struct {
		name    string
		good    int
		bad     int // joins with a wrong token secret
		clashes int // joins reusing the name of a good join, with another key
		routes  bool
	}{
		{"no routes", 40, 0, 0, false},
		{"with refusals", 40, 10, 10, false},
		{"with routes", 20, 5, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
			badTok := tok[:len(tok)-1] + "x"
			if badTok == tok {
				badTok = tok[:len(tok)-1] + "y"
			}
			type result struct {
				name string
				good bool
				err  error
			}
			var (
				wg  sync.WaitGroup
				mu  sync.Mutex
				res []result
			)
			run := func(name, tk string, good bool, routes []string) {
				wg.Go(func() {
					_, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tk, PublicKey: newAgent(t).key(), Name: name, Routes: routes})
					mu.Lock()
					res = append(res, result{name, good, err})
					mu.Unlock()
				})
			}
			for i := range tt.good {
				var routes []string
				if tt.routes {
					routes = []string{fmt.Sprintf("10.%d.0.0/16", i)}
				}
				run(fmt.Sprintf("n%d", i), tok, true, routes)
			}
			for i := range tt.bad {
				run(fmt.Sprintf("bad%d", i), badTok, false, nil)
			}
			wg.Wait()
			// Name clashes after the good joins committed.
			for i := range tt.clashes {
				run(fmt.Sprintf("n%d", i), tok, false, nil)
			}
			wg.Wait()
			for _, r := range res {
				switch {
				case r.good && r.err != nil:
					t.Errorf("join %s: got %v, want success", r.name, r.err)
				case !r.good && r.err == nil:
					t.Errorf("join %s: got success, want a refusal", r.name)
				case !r.good && code(r.err) != codes.PermissionDenied && code(r.err) != codes.AlreadyExists && code(r.err) != codes.InvalidArgument:
					t.Errorf("join %s: got %v, want a refusal", r.name, r.err)
				}
			}
			snap := e.snapshot(t)
			if len(snap.Nodes) != tt.good {
				t.Errorf("got %d nodes stored, want %d", len(snap.Nodes), tt.good)
			}
			addrs := map[string]string{}
			for _, n := range snap.Nodes {
				if len(n.Addresses) != 1 {
					t.Errorf("node %s: got addresses %v, want one", n.Name, n.Addresses)
					continue
				}
				if other, dup := addrs[n.Addresses[0].String()]; dup {
					t.Errorf("nodes %s and %s share address %s", other, n.Name, n.Addresses[0])
				}
				addrs[n.Addresses[0].String()] = n.Name
				if _, _, ok := e.srv.Registry().Node(n.Key); !ok {
					t.Errorf("node %s stored but not in the registry", n.Name)
				}
			}
			if got := len(e.srv.Registry().Nodes()); got != tt.good {
				t.Errorf("got %d nodes in the registry, want %d", got, tt.good)
			}
			if got := e.srv.pools[0].InUse(); got != tt.good {
				t.Errorf("got %d addresses in use, want %d", got, tt.good)
			}
			if len(snap.Tokens) != 1 || snap.Tokens[0].Uses != tt.good {
				t.Errorf("got tokens %+v, want one with %d uses", snap.Tokens, tt.good)
			}
		})
	}
}

package server

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store/kubestore"
	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/internal/kubetest"
)

// TestJoinsOnTwoReplicas: two servers, each with its own Kubernetes
// store on one namespace of a real API server (two replicas writing at
// once, as a deposed leader's joins in flight during a failover do), take
// 50 concurrent joins between them: all succeed with distinct names and
// addresses, though each server's address pool starts out knowing
// nothing of the other's; and a 3-use token admits exactly 3 of 10
// joins spread over both.
func TestJoinsOnTwoReplicas(t *testing.T) {
	kapi := kubetest.Start(t)
	_, dyn := kapi.Clients(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := kubestore.InstallCRDs(ctx, dyn); err != nil {
		t.Fatal(err)
	}
	ns := kapi.Namespace(t)
	var ctls []api.ControlClient
	var admins []api.AdminClient
	for range 2 {
		st, err := kubestore.Open(ctx, kubestore.Config{Client: dyn, Namespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		srv, err := New(ctx, Config{Store: st, Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
			CAPin: [32]byte{0xca}, Clock: clock.NewFake(t0), MapInterval: -1, FailureRate: -1})
		if err != nil {
			t.Fatal(err)
		}
		cc := serve(t, srv)
		ctls = append(ctls, api.NewControlClient(cc))
		admins = append(admins, api.NewAdminClient(cc))
	}
	reusable, err := admins[0].CreateToken(ctx, &api.CreateTokenRequest{Reusable: true})
	if err != nil {
		t.Fatal(err)
	}
	three, err := admins[1].CreateToken(ctx, &api.CreateTokenRequest{Uses: 3})
	if err != nil {
		t.Fatal(err)
	}

	burst := func(n int, tok string, on ...int) (ok []*api.JoinResponse, refused []error) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				replica := i % 2
				if len(on) > 0 {
					replica = on[0]
				}
				resp, err := joinVia(ctx, ctls[replica], &api.JoinRequest{Token: tok, PublicKey: newAgent(t).key(), Name: fmt.Sprintf("n%d-%d-%d", n, len(on), i)})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					refused = append(refused, err)
				} else {
					ok = append(ok, resp)
				}
			})
		}
		wg.Wait()
		return ok, refused
	}

	// The first replica alone gives out 20 addresses the second's pool
	// does not know of.
	early, refused := burst(20, reusable.GetToken(), 0)
	// One join on the second: its pool offers an address the first gave
	// out, and the next, and ...; it must learn them all at once.
	one, refused1 := burst(1, reusable.GetToken(), 1)
	joined, more := burst(50, reusable.GetToken())
	joined = append(append(joined, early...), one...)
	for _, err := range append(append(refused, refused1...), more...) {
		t.Errorf("join refused: %v", err)
	}
	names, addrs := map[string]bool{}, map[string]bool{}
	for _, r := range joined {
		if names[r.GetSelf().GetName()] {
			t.Errorf("name %s handed out twice", r.GetSelf().GetName())
		}
		names[r.GetSelf().GetName()] = true
		for _, a := range r.GetSelf().GetAddresses() {
			if addrs[a] {
				t.Errorf("address %s handed out twice", a)
			}
			addrs[a] = true
		}
	}
	if len(joined) != 71 || len(addrs) != 71 {
		t.Errorf("20 joins on one replica, 1 on the other, then 50 over both: %d joined with %d distinct addresses", len(joined), len(addrs))
	}

	joined, refused = burst(10, three.GetToken())
	if len(joined) != 3 {
		t.Errorf("a 3-use token, 10 joins over two replicas: %d admitted, want 3", len(joined))
	}
	for _, err := range refused {
		if code(err) != codes.PermissionDenied {
			t.Errorf("refused with %v, want PermissionDenied (used up)", err)
		}
	}
}

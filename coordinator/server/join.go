package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/coordinator/token"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

// errInvalidToken is what a caller without a valid token ID and secret
// hears, whichever of the two was wrong: the coordinator does not tell
// outsiders which token IDs exist.
var errInvalidToken = status.Error(codes.PermissionDenied, "invalid join token")

// Join registers a node. The caller proves its key first (see
// authenticate), so a join can only ever register or change the caller's
// own key; then the token decides what it may do. A refused join changes
// nothing. Refusals are charged to the caller's address and token ID.
func (s *Server) Join(stream api.Control_JoinServer) error {
	ctx := stream.Context()
	nk, _, err := s.authenticate(stream, api.AuthJoin)
	if err != nil {
		return err
	}
	msg, err := s.recv(stream)
	if err != nil {
		return err
	}
	req := msg.GetJoin()
	if req == nil {
		return status.Error(codes.InvalidArgument, "after AuthProof, Join wants a JoinRequest")
	}
	if len(req.GetToken()) > maxTokenLen {
		s.fails.fail(source(ctx))
		return status.Error(codes.InvalidArgument, jointoken.ErrMalformed.Error())
	}
	tok, err := jointoken.Parse(req.GetToken())
	if err != nil {
		s.fails.fail(source(ctx))
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if !s.fails.allow(source(ctx), "token "+tok.ID) {
		return status.Error(codes.ResourceExhausted, "too many failed joins with this token or from this address; wait and retry")
	}
	resp, err := s.join(ctx, nk, tok, req)
	if err != nil {
		if c := status.Code(err); c == codes.PermissionDenied || c == codes.InvalidArgument || c == codes.AlreadyExists {
			s.fails.fail(source(ctx), "token "+tok.ID)
		}
		return err
	}
	return stream.Send(&api.ServerMessage{Msg: &api.ServerMessage_Joined{Joined: resp}})
}

// joinInput is a JoinRequest checked for form.
type joinInput struct {
	name     string // requested; empty: decided by identity or hostname
	hostname string
	routes   []netip.Prefix
	kube     string // Kubernetes Node proven by a service account token
}

func (s *Server) checkJoin(ctx context.Context, nk key.Public, req *api.JoinRequest) (joinInput, error) {
	in := joinInput{name: req.GetName(), hostname: req.GetHostname()}
	// JoinRequest.public_key predates the key proof; if given it must be
	// the proven key.
	if pk := req.GetPublicKey(); len(pk) > 0 && (len(pk) != len(nk) || key.Public(pk) != nk) {
		return in, status.Error(codes.InvalidArgument, "public_key differs from the key proven in Hello")
	}
	if len(in.hostname) > maxHostname || !printable(in.hostname) {
		return in, status.Errorf(codes.InvalidArgument, "hostname: want at most %d printable characters", maxHostname)
	}
	if len(req.GetKubernetesToken()) > maxKubeToken {
		return in, status.Errorf(codes.InvalidArgument, "kubernetes token is longer than %d bytes", maxKubeToken)
	}
	routes, err := s.parseRoutes(req.GetRoutes())
	if err != nil {
		return in, status.Error(codes.InvalidArgument, err.Error())
	}
	in.routes = routes
	if t := req.GetKubernetesToken(); t != "" {
		if s.cfg.Kube == nil {
			return in, status.Error(codes.FailedPrecondition, "this coordinator does not watch Kubernetes, so it cannot verify a Kubernetes service account token")
		}
		node, err := s.cfg.Kube.VerifyNode(ctx, t)
		if err != nil {
			return in, status.Errorf(codes.PermissionDenied, "kubernetes service account token: %v", err)
		}
		in.kube = node
	}
	return in, nil
}

func printable(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// parseRoutes parses advertised routes and refuses what no one may route
// (special-purpose ranges, too broad, the overlay, protected addresses).
// Whether a route is approved is decided later.
func (s *Server) parseRoutes(in []string) ([]netip.Prefix, error) {
	if len(in) > maxRoutes {
		return nil, fmt.Errorf("%d routes advertised, at most %d allowed", len(in), maxRoutes)
	}
	var out []netip.Prefix
	for _, r := range in {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", r, err)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("route %s has host bits set (did you mean %s?)", p, p.Masked())
		}
		if err := s.policy.Check(p); err != nil {
			return nil, fmt.Errorf("route refused: %w", err)
		}
		for _, q := range out {
			if q.Overlaps(p) {
				return nil, fmt.Errorf("routes %s and %s overlap", q, p)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// within reports whether p lies inside one of the allowed prefixes.
func within(p netip.Prefix, allowed []netip.Prefix) bool {
	for _, a := range allowed {
		if a.Bits() <= p.Bits() && a.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// join checks the request and the token and registers (or updates) the
// node of the proven key.
func (s *Server) join(ctx context.Context, nk key.Public, tok jointoken.Token, req *api.JoinRequest) (*api.JoinResponse, error) {
	in, err := s.checkJoin(ctx, nk, req)
	if err != nil {
		s.refused(in.name, err)
		return nil, err
	}
	if len(in.routes) > 0 || in.kube != "" {
		// Route clashes and Kubernetes identities are checked against
		// the registry: nothing else may change it meanwhile.
		s.regMu.Lock()
		defer s.regMu.Unlock()
	} else {
		s.regMu.RLock()
		defer s.regMu.RUnlock()
	}
	km := &s.keyMu[int(nk[0])%len(s.keyMu)]
	km.Lock()
	defer km.Unlock()
	now := s.clk.Now()
	// A new node's addresses are allocated before the transaction (its
	// function must be free of side effects: the store may run it
	// again) and released if the join fails. Another writer sharing the
	// store (a coordinator replica) may hold an address this one's pool
	// thought free: it stays reserved here and the join takes the next.
	var fresh []netip.Addr
	defer func() {
		for _, a := range fresh {
			s.pool(a).Return(a)
		}
	}()
	var node store.Node
	var pending []netip.Prefix
	for attempt := 0; ; attempt++ {
		if fresh == nil {
			var known bool
			if known, err = s.known(ctx, nk); err != nil {
				break
			}
			if !known {
				if fresh, err = s.allocate(); err != nil {
					break
				}
			}
		}
		node, pending, err = s.register(ctx, nk, tok, in, now, fresh)
		var taken *store.AddrInUseError
		if !errors.As(err, &taken) || attempt == maxAllocAttempts-1 {
			break
		}
		s.log.Info("overlay address taken by another writer; allocating another", "name", in.name, "addr", taken.Addr, "holder", taken.Owner)
		if err = s.resyncPools(ctx); err != nil {
			break
		}
		// Keep the taken address reserved (it is in use), free the rest.
		for _, a := range fresh {
			if a != taken.Addr {
				s.pool(a).Return(a)
			}
		}
		fresh = nil
	}
	if err != nil {
		if _, ok := status.FromError(err); ok {
			s.refused(in.name, err)
			return nil, err
		}
		s.log.Error("join failed", "name", in.name, "err", err)
		return nil, storeError("join", err)
	}
	fresh = nil // the node holds them now
	s.reg.Upsert(node)
	s.m.joins.Add(1)
	s.log.Info("node joined", "name", node.Name, "key", node.Key, "addresses", node.Addresses, "token", tok.ID,
		"kubernetes_node", node.KubeNode, "routes", node.Routes, "pending_routes", pending)
	return s.joinResponse(node, pending), nil
}

// joinResponse tells a node what it is registered as.
func (s *Server) joinResponse(node store.Node, pending []netip.Prefix) *api.JoinResponse {
	resp := &api.JoinResponse{Self: &api.Node{PublicKey: node.Key[:], Name: node.Name, Hostname: node.Hostname, KubernetesNode: node.KubeNode}}
	for _, a := range node.Addresses {
		resp.Self.Addresses = append(resp.Self.Addresses, a.String())
	}
	for _, p := range node.Routes {
		resp.Self.Routes = append(resp.Self.Routes, p.String())
	}
	for _, p := range pending {
		resp.PendingRoutes = append(resp.PendingRoutes, p.String())
	}
	for _, p := range s.pools {
		resp.OverlayPrefixes = append(resp.OverlayPrefixes, p.Prefix().String())
	}
	return resp
}

// maxAllocAttempts bounds a join's retries for addresses other writers
// took meanwhile.
const maxAllocAttempts = 8

// resyncPools learns the addresses other writers handed out: the store's
// cache is reloaded (if it keeps one) and every stored address reserved.
func (s *Server) resyncPools(ctx context.Context) error {
	if r, ok := s.cfg.Store.(store.Refresher); ok {
		if err := r.Refresh(ctx); err != nil {
			return err
		}
	}
	return s.cfg.Store.View(ctx, func(tx store.Tx) error {
		nodes, err := tx.Nodes()
		for _, n := range nodes {
			for _, a := range n.Addresses {
				if p := s.pool(a); p != nil {
					p.Reserve(a) // ErrInUse: known already
				}
			}
		}
		return err
	})
}

// known reports whether nk is a registered node.
func (s *Server) known(ctx context.Context, nk key.Public) (bool, error) {
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		_, err := tx.Node(nk)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// register checks the token and writes the node in one transaction; a
// new node gets the addresses in fresh. It returns a
// *store.AddrInUseError if another writer holds one of them.
func (s *Server) register(ctx context.Context, nk key.Public, tok jointoken.Token, in joinInput, now time.Time, fresh []netip.Addr) (node store.Node, pending []netip.Prefix, err error) {
	err = s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		st, err := tx.Token(tok.ID)
		if errors.Is(err, store.ErrNotFound) {
			token.Check(store.Token{}, tok.Secret, now) // the same work as for a known ID
			return errInvalidToken
		}
		if err != nil {
			return err
		}
		if err := token.Check(st, tok.Secret, now); errors.Is(err, token.ErrInvalid) {
			return errInvalidToken
		} else if err != nil {
			return status.Error(codes.PermissionDenied, err.Error())
		}
		old, err := tx.Node(nk)
		known := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		node = old
		if !known {
			if fresh == nil {
				// Deleted since known() said otherwise: join again.
				return status.Error(codes.Aborted, "the node was deleted during its join; join again")
			}
			node = store.Node{Key: nk, CreatedAt: now, Addresses: slices.Clone(fresh)}
		}
		node.Tags = st.Tags
		node.TokenID = st.ID
		if node, pending, err = s.settle(tx, node, old, in, st, st.Routes); err != nil {
			return err
		}
		st.Uses++
		if err := tx.PutToken(st); err != nil {
			return err
		}
		return putNode(tx, node)
	})
	return node, pending, err
}

// settle decides what a join or an update makes of node (old as stored,
// the zero Node for a new one): its Kubernetes identity and name (see
// identity), hostname and routes, those within allowed approved. The
// checks are the same for both: a name another node holds, a Kubernetes
// node another key holds, routes that clash.
func (s *Server) settle(tx store.Tx, node, old store.Node, in joinInput, st store.Token, allowed []netip.Prefix) (store.Node, []netip.Prefix, error) {
	kube, name, err := s.identity(in, st, old)
	if err != nil {
		return node, nil, err
	}
	if other, err := tx.NodeByName(name); err == nil && other.Key != node.Key {
		return node, nil, errNameTaken(name)
	}
	if kube != "" && kube != old.KubeNode {
		if owner, ok := s.reg.KubeNodeOwner(kube, node.Key); ok {
			return node, nil, status.Errorf(codes.AlreadyExists, "Kubernetes node %s is already registered as node %q with another key; an admin must delete that node first", kube, owner)
		}
	}
	node.Name = name
	node.Hostname = in.hostname
	node.KubeNode = kube
	node.AdvertisedRoutes = in.routes
	var pending []netip.Prefix
	node.Routes, pending = s.approve(node.Key, kube, in.routes, old.Routes, allowed)
	return node, pending, nil
}

func errNameTaken(name string) error {
	return status.Errorf(codes.AlreadyExists, "node name %q is taken by another node; choose another with --name, or have an admin delete the old node", name)
}

// putNode writes node, a name clash the store finds as errNameTaken.
func putNode(tx store.Tx, node store.Node) error {
	if err := tx.PutNode(node); errors.Is(err, store.ErrExists) {
		return errNameTaken(node.Name)
	} else if err != nil {
		return err
	}
	return nil
}

func (s *Server) refused(name string, err error) {
	s.m.joinsRefused.Add(1)
	s.log.Info("join refused", "name", name, "err", err)
}

// identity decides the joining node's Kubernetes identity and name. A
// Kubernetes Node's name is reserved for the node proven to be it (by a
// service account token, or a token the admin bound to it); a node that
// was proven once stays so.
func (s *Server) identity(in joinInput, st store.Token, old store.Node) (kube, name string, err error) {
	kube = in.kube
	if st.KubeNode != "" {
		if kube != "" && kube != st.KubeNode {
			return "", "", status.Errorf(codes.PermissionDenied, "the join token is bound to Kubernetes node %s, the service account token is from node %s", st.KubeNode, kube)
		}
		kube = st.KubeNode
	}
	if kube == "" {
		kube = old.KubeNode
	} else if old.KubeNode != "" && old.KubeNode != kube {
		return "", "", status.Errorf(codes.PermissionDenied, "this node is Kubernetes node %s; it cannot become %s (an admin must delete it first)", old.KubeNode, kube)
	}
	name = in.name
	switch {
	case name == "" && kube != "":
		name = kube
	case name == "":
		name = in.hostname
	}
	if err := ValidName(name); err != nil {
		return "", "", status.Error(codes.InvalidArgument, err.Error())
	}
	if st.KubeNode != "" && name != st.KubeNode {
		return "", "", status.Errorf(codes.PermissionDenied, "the join token is bound to node %s; it cannot join as %q", st.KubeNode, name)
	}
	if name != kube && s.reg.IsKubeNode(name) {
		return "", "", status.Errorf(codes.PermissionDenied,
			"node name %q belongs to a Kubernetes node: join from that node with its service account token, or with a token bound to it (edgewire token create --kubernetes-node %s)", name, name)
	}
	return kube, name, nil
}

// approve splits advertised routes into approved ones (within the
// token's allow-list, or approved before, and clashing with no other
// node's routes or pod CIDRs) and pending ones.
func (s *Server) approve(k key.Public, kube string, advertised, before, allowed []netip.Prefix) (approved, pending []netip.Prefix) {
	for _, p := range advertised {
		if (within(p, allowed) || slices.Contains(before, p)) && s.reg.CheckRoutes(k, kube, []netip.Prefix{p}) == nil {
			approved = append(approved, p)
		} else {
			pending = append(pending, p)
		}
	}
	return approved, pending
}

// allocate takes one overlay address from every pool, or none.
func (s *Server) allocate() ([]netip.Addr, error) {
	var got []netip.Addr
	for _, pool := range s.pools {
		a, err := pool.Allocate()
		if err != nil {
			for _, a := range got {
				s.pool(a).Return(a)
			}
			return nil, status.Errorf(codes.ResourceExhausted, "allocate overlay address from %s: %v", pool.Prefix(), err)
		}
		got = append(got, a)
	}
	return got, nil
}

// bindKubeNode records, for a node that connects with a Kubernetes service
// account token but has no verified Kubernetes identity yet (it joined
// before identities were checked), the Node it is proven to run on. It
// runs over the node's authenticated stream, so only the key's holder can
// bind it; failures are logged and the stream goes on.
func (s *Server) bindKubeNode(ctx context.Context, nk key.Public, tok string) {
	n, _, ok := s.reg.Node(nk)
	if !ok || n.KubeNode != "" || s.cfg.Kube == nil {
		return
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	kube, err := s.cfg.Kube.VerifyNode(vctx, tok)
	cancel()
	if err != nil {
		s.log.Warn("node's Kubernetes service account token not verified", "node", n.Name, "err", err)
		return
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	var node store.Node
	err = s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if node, err = tx.Node(nk); err != nil {
			return err
		}
		if node.KubeNode != "" {
			return nil
		}
		if node.Name != kube && s.reg.IsKubeNode(node.Name) {
			return fmt.Errorf("its name %q is another Kubernetes node's", node.Name)
		}
		if owner, ok := s.reg.KubeNodeOwner(kube, nk); ok {
			return fmt.Errorf("Kubernetes node %s is already node %q", kube, owner)
		}
		node.KubeNode = kube
		return tx.PutNode(node)
	})
	if err != nil {
		s.log.Warn("cannot bind node to its Kubernetes node", "node", n.Name, "kubernetes_node", kube, "err", err)
		return
	}
	s.reg.Upsert(node)
	s.log.Info("node verified as Kubernetes node", "node", node.Name, "kubernetes_node", kube)
}

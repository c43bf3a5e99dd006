package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/coordinator/token"
	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/internal/routeguard"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

const (
	maxTokenTags       = 16
	maxTokenTTLSeconds = int64(math.MaxInt64 / time.Second)
)

// CreateToken creates a join token and returns it; the secret is shown
// only here.
func (s *Server) CreateToken(ctx context.Context, req *api.CreateTokenRequest) (*api.CreateTokenResponse, error) {
	if len(req.GetTags()) > maxTokenTags {
		return nil, status.Errorf(codes.InvalidArgument, "at most %d tags", maxTokenTags)
	}
	for _, t := range req.GetTags() {
		if err := ValidName(t); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "tag: %v", err)
		}
	}
	// Seconds beyond this overflow time.Duration and would wrap to a
	// token that never expires or has already expired.
	if ttl := req.GetTtlSeconds(); ttl > maxTokenTTLSeconds || ttl < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "token ttl of %d seconds: want 0 (never expires) to %d", ttl, maxTokenTTLSeconds)
	}
	if len(req.GetRoutes()) > maxRoutes {
		return nil, status.Errorf(codes.InvalidArgument, "at most %d route prefixes", maxRoutes)
	}
	var allowed []netip.Prefix
	for _, r := range req.GetRoutes() {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "route %q: %v", r, err)
		}
		// An allow-list entry may be broad (the pod network, say), but
		// what it approves must still pass the route policy, so only
		// special ranges and the overlay are refused here.
		if err := (&routeguard.Policy{MinBits4: 1, MinBits6: 1, Overlay: s.cfg.Prefixes}).Check(p); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "route allow-list: %v", err)
		}
		allowed = append(allowed, p)
	}
	kube := req.GetKubernetesNode()
	if kube != "" {
		if err := ValidName(kube); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "kubernetes node: %v", err)
		}
		if req.GetReusable() || req.GetUses() > 1 {
			return nil, status.Error(codes.InvalidArgument, "a token bound to one Kubernetes node admits one node: it cannot be reusable or have more uses")
		}
	}
	tok, err := jointoken.Generate(s.cfg.CAPin, rand.Reader)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "generate token: %v", err)
	}
	rec, err := token.NewRecord(tok, s.clk.Now(), time.Duration(req.GetTtlSeconds())*time.Second,
		req.GetReusable(), int(req.GetUses()), req.GetTags())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	rec.Routes, rec.KubeNode = allowed, kube
	err = s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Token(rec.ID); err == nil {
			return store.ErrExists
		}
		return tx.PutToken(rec)
	})
	if err != nil {
		return nil, storeError("store token", err)
	}
	s.log.Info("join token created", "id", rec.ID, "expires", rec.ExpiresAt, "reusable", rec.Reusable, "max_uses", rec.MaxUses)
	return &api.CreateTokenResponse{Token: tok.String(), Info: tokenInfo(rec)}, nil
}

func tokenInfo(t store.Token) *api.TokenInfo {
	ti := &api.TokenInfo{
		Id: t.ID, CreatedUnix: t.CreatedAt.Unix(), Reusable: t.Reusable,
		MaxUses: int32(t.MaxUses), Uses: int32(t.Uses), Revoked: t.Revoked, Tags: t.Tags,
		KubernetesNode: t.KubeNode,
	}
	for _, p := range t.Routes {
		ti.Routes = append(ti.Routes, p.String())
	}
	if !t.ExpiresAt.IsZero() {
		ti.ExpiresUnix = t.ExpiresAt.Unix()
	}
	return ti
}

// ListTokens lists join tokens (never their secrets).
func (s *Server) ListTokens(ctx context.Context, _ *api.ListTokensRequest) (*api.ListTokensResponse, error) {
	var resp api.ListTokensResponse
	err := s.cfg.Store.View(ctx, func(tx store.Tx) error {
		ts, err := tx.Tokens()
		for _, t := range ts {
			resp.Tokens = append(resp.Tokens, tokenInfo(t))
		}
		return err
	})
	if err != nil {
		return nil, storeError("list tokens", err)
	}
	return &resp, nil
}

// RevokeToken marks a token revoked; nodes that joined with it stay.
func (s *Server) RevokeToken(ctx context.Context, req *api.RevokeTokenRequest) (*api.RevokeTokenResponse, error) {
	id := req.GetId()
	if t, err := jointoken.Parse(id); err == nil {
		id = t.ID // accept the whole token as well as its id
	}
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		t, err := tx.Token(id)
		if err != nil {
			return err
		}
		t.Revoked = true
		return tx.PutToken(t)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no token with id %q", id)
	}
	if err != nil {
		return nil, storeError("revoke token", err)
	}
	s.log.Info("join token revoked", "id", id)
	return &api.RevokeTokenResponse{}, nil
}

// ListNodes lists registered nodes with their presence.
func (s *Server) ListNodes(context.Context, *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	return &api.ListNodesResponse{Nodes: s.reg.Nodes()}, nil
}

// DeleteNode removes a node: it leaves every peer's WireGuard config and
// its own stream is closed.
func (s *Server) DeleteNode(ctx context.Context, req *api.DeleteNodeRequest) (*api.DeleteNodeResponse, error) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	var node store.Node
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		node, err = tx.NodeByName(req.GetName())
		if err != nil {
			return err
		}
		return tx.DeleteNode(node.Key)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no node named %q", req.GetName())
	}
	if err != nil {
		return nil, storeError("delete node", err)
	}
	for _, a := range node.Addresses {
		if p := s.pool(a); p != nil {
			p.Release(a)
		}
	}
	s.reg.Delete(node.Key)
	s.topo.Forget(node.Key)
	// Outstanding tickets stay valid until they expire; relays must
	// refuse the node until then: the embedded relay (and its mesh) at
	// once, every other relay through the signed list agents carry.
	until := s.clk.Now().Add(s.cfg.TicketTTL)
	if s.cfg.OnDelete != nil {
		s.cfg.OnDelete(node.Key, until)
	}
	s.revoke(node.Key, until)
	s.log.Info("node deleted", "name", node.Name, "key", node.Key)
	return &api.DeleteNodeResponse{}, nil
}

// ApproveRoutes approves advertised routes of a node (or withdraws
// approval). Approved routes must still pass the route policy and clash
// with no other node's routes or pod CIDRs; a refused request changes
// nothing.
func (s *Server) ApproveRoutes(ctx context.Context, req *api.ApproveRoutesRequest) (*api.ApproveRoutesResponse, error) {
	parse := func(what string, in []string) ([]netip.Prefix, error) {
		if len(in) > maxRoutes {
			return nil, status.Errorf(codes.InvalidArgument, "at most %d routes", maxRoutes)
		}
		var out []netip.Prefix
		for _, r := range in {
			p, err := netip.ParsePrefix(r)
			if err != nil || p != p.Masked() {
				return nil, status.Errorf(codes.InvalidArgument, "%s route %q: want a prefix like 10.42.0.0/16", what, r)
			}
			out = append(out, p)
		}
		return out, nil
	}
	approve, err := parse("approve", req.GetApprove())
	if err != nil {
		return nil, err
	}
	withdraw, err := parse("withdraw", req.GetWithdraw())
	if err != nil {
		return nil, err
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	var node store.Node
	err = s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if node, err = tx.NodeByName(req.GetName()); err != nil {
			return err
		}
		want := approve
		if req.GetAll() {
			want = node.AdvertisedRoutes
		}
		routes := slices.DeleteFunc(slices.Clone(node.Routes), func(p netip.Prefix) bool { return slices.Contains(withdraw, p) })
		for _, p := range want {
			if slices.Contains(routes, p) {
				continue
			}
			if !slices.Contains(node.AdvertisedRoutes, p) {
				return status.Errorf(codes.FailedPrecondition, "node %s does not advertise %s (it advertises %v)", node.Name, p, node.AdvertisedRoutes)
			}
			if err := s.policy.Check(p); err != nil {
				return status.Errorf(codes.InvalidArgument, "route refused: %v", err)
			}
			if err := s.reg.CheckRoutes(node.Key, node.KubeNode, append(slices.Clip(routes), p)); err != nil {
				return status.Error(codes.FailedPrecondition, err.Error())
			}
			routes = append(routes, p)
		}
		node.Routes = routes
		return tx.PutNode(node)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no node named %q", req.GetName())
	}
	if _, ok := status.FromError(err); ok && err != nil {
		return nil, err
	}
	if err != nil {
		return nil, storeError("approve routes", err)
	}
	s.reg.Upsert(node)
	s.log.Info("routes approved", "node", node.Name, "routes", node.Routes)
	for _, n := range s.reg.Nodes() {
		if n.GetName() == node.Name {
			return &api.ApproveRoutesResponse{Node: n}, nil
		}
	}
	return &api.ApproveRoutesResponse{}, nil
}

// revoke adds a deleted node to the relay revocation list and publishes a
// newly signed list in the network map.
func (s *Server) revoke(nk key.Public, until time.Time) {
	if s.cfg.TicketKey == nil {
		return // no tickets, no relays to tell
	}
	now := s.clk.Now()
	s.revMu.Lock()
	defer s.revMu.Unlock()
	s.revoked[nk] = until
	r := relay.Revocations{Issued: now.Truncate(time.Second)}
	// Relays apply a list only if it is newer than the last, at second
	// precision.
	if !r.Issued.After(s.revIssued) {
		r.Issued = s.revIssued.Add(time.Second)
	}
	s.revIssued = r.Issued
	for k, u := range s.revoked {
		if !u.After(now) {
			delete(s.revoked, k) // its last ticket has expired
			continue
		}
		r.Entries = append(r.Entries, relay.Revocation{Node: k, Until: u})
	}
	slices.SortFunc(r.Entries, func(a, b relay.Revocation) int { return bytes.Compare(a.Node[:], b.Node[:]) })
	s.reg.SetRelayRevocations(relay.SignRevocations(s.cfg.TicketKey, r))
}

// AdminTokenHash hashes an admin token for AdminAuth.
func AdminTokenHash(tok string) [32]byte { return sha256.Sum256([]byte(tok)) }

// NewAdminToken returns a fresh random admin token.
func NewAdminToken() (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "ewadm1." + hex.EncodeToString(b[:]), nil
}

const adminPrefix = "/" + "edgewire.v1.Admin/"

// AdminAuth returns interceptors for a network listener: Admin methods
// require "authorization: Bearer <admin token>"; Control methods pass.
func AdminAuth(hash [32]byte) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	check := func(ctx context.Context, method string) error {
		if !strings.HasPrefix(method, adminPrefix) {
			return nil
		}
		md, _ := metadata.FromIncomingContext(ctx)
		for _, v := range md.Get("authorization") {
			got, ok := strings.CutPrefix(v, "Bearer ")
			if !ok {
				continue
			}
			h := sha256.Sum256([]byte(got))
			if subtle.ConstantTimeCompare(h[:], hash[:]) == 1 {
				return nil
			}
		}
		return status.Error(codes.Unauthenticated, "admin calls over the network need a valid admin token")
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return h(srv, ss)
	}
	return unary, stream
}

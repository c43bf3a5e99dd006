package server

import (
	"context"
	"errors"
	"net/netip"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/types/key"
)

// Update changes a registered node's name, advertised routes or hostname
// at its own request: an agent's flags are its desired state on every
// start, not only at its join. The caller proves its key first, so a node
// can only ever change itself; the checks are a join's (see settle), with
// the routes its join token allows approved if the token still stands.
// A refused update changes nothing.
func (s *Server) Update(stream api.Control_UpdateServer) error {
	ctx := stream.Context()
	nk, _, err := s.authenticate(stream, api.AuthUpdate)
	if err != nil {
		return err
	}
	msg, err := s.recv(stream)
	if err != nil {
		return err
	}
	req := msg.GetUpdate()
	if req == nil {
		return status.Error(codes.InvalidArgument, "after AuthProof, Update wants an UpdateRequest")
	}
	node, pending, err := s.update(ctx, nk, req)
	if err != nil {
		if _, ok := status.FromError(err); !ok {
			s.log.Error("update failed", "key", nk, "err", err)
			return storeError("update", err)
		}
		s.m.updatesRefused.Add(1)
		s.log.Info("update refused", "key", nk, "name", req.GetName(), "err", err)
		return err
	}
	return stream.Send(&api.ServerMessage{Msg: &api.ServerMessage_Joined{Joined: s.joinResponse(node, pending)}})
}

func (s *Server) update(ctx context.Context, nk key.Public, req *api.UpdateRequest) (store.Node, []netip.Prefix, error) {
	// The form of a join request, with what is not set left empty here
	// and filled in from the registry below.
	in, err := s.checkJoin(ctx, nk, &api.JoinRequest{Name: req.GetName(), Hostname: req.GetHostname(), Routes: req.GetRoutes()})
	if err != nil {
		return store.Node{}, nil, err
	}
	// Route clashes and names are checked against the registry: nothing
	// else may change it meanwhile.
	s.regMu.Lock()
	defer s.regMu.Unlock()
	km := &s.keyMu[int(nk[0])%len(s.keyMu)]
	km.Lock()
	defer km.Unlock()
	var node store.Node
	var pending []netip.Prefix
	before := store.Node{}
	err = s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		old, err := tx.Node(nk)
		if errors.Is(err, store.ErrNotFound) {
			return status.Error(codes.NotFound, "this node is not registered (deleted by an admin?): join again with a token")
		}
		if err != nil {
			return err
		}
		before = old
		st, err := tx.Token(old.TokenID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		// A revoked or deleted token no longer approves routes; those
		// approved before stay.
		allowed := st.Routes
		if err != nil || st.Revoked {
			allowed = nil
		}
		want := in
		if !req.GetSetName() {
			want.name = old.Name
		}
		if !req.GetSetRoutes() {
			want.routes = old.AdvertisedRoutes
		}
		if want.hostname == "" {
			want.hostname = old.Hostname
		}
		if node, pending, err = s.settle(tx, old, old, want, st, allowed); err != nil {
			return err
		}
		return putNode(tx, node)
	})
	if err != nil {
		return node, nil, err
	}
	s.reg.Upsert(node)
	s.m.updates.Add(1)
	s.log.Info("node updated", "name", node.Name, "key", nk, "was", before.Name, "routes", node.Routes,
		"pending_routes", pending, "routes_before", before.Routes)
	return node, pending, nil
}

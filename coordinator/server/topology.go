package server

import (
	"context"
	"encoding/json"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/topology"
	"github.com/edgewire/edgewire/types/key"
	"github.com/edgewire/edgewire/types/topoview"
)

// pathReport takes a node's path report from its stream; a bad one is
// dropped (and counted), never the stream.
func (s *Server) pathReport(nk key.Public, m *api.PathReport) error {
	r, err := topology.Parse(nk, m, s.clk.Now())
	if err != nil {
		s.m.reportsBad.Add(1)
		return err
	}
	s.topo.Put(nk, r)
	return nil
}

// TopologyView is the fleet's connectivity from the agents' path reports
// (the /topology page, `edgewire graph`).
func (s *Server) TopologyView() topoview.View {
	pbs := s.reg.Nodes()
	nodes := make([]topology.NodeInfo, 0, len(pbs))
	for _, n := range pbs {
		if len(n.GetPublicKey()) != key.Size {
			continue
		}
		nodes = append(nodes, topology.NodeInfo{Key: key.Public(n.GetPublicKey()), Name: n.GetName(), Addresses: n.GetAddresses(),
			Online: n.GetOnline(), Version: n.GetVersion(), Tags: n.GetTags()})
	}
	var relays []topology.RelayInfo
	for _, r := range s.cfg.Relays {
		ri := topology.RelayInfo{ID: r.GetId(), Name: r.GetName()}
		if s.cfg.RelayStats != nil {
			ri.Stats = s.cfg.RelayStats(r.GetId())
		}
		relays = append(relays, ri)
	}
	return s.topo.View(nodes, relays, s.clk.Now())
}

// Topology serves the view to the CLI.
func (s *Server) Topology(context.Context, *api.TopologyRequest) (*api.TopologyResponse, error) {
	b, err := json.Marshal(s.TopologyView())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode the topology: %v", err)
	}
	return &api.TopologyResponse{ViewJson: b}, nil
}

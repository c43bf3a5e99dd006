package mapstate

import (
	"testing"

	"github.com/edgewire/edgewire/api"
)

func TestApplyServices(t *testing.T) {
	self := &api.Node{PublicKey: make([]byte, 32), Name: "self"}
	self.PublicKey[0] = 9
	web := &api.Service{Namespace: "demo", Name: "web", ClusterIps: []string{"10.96.0.10"}}
	api2 := &api.Service{Namespace: "demo", Name: "api", ClusterIps: []string{"10.96.0.20"}}
	s := New()
	if err := s.Apply(&api.NetworkMap{Version: 5, Full: true, Self: self, Services: []*api.Service{web}}); err != nil {
		t.Fatal(err)
	}
	gen := s.ServicesGen
	if len(s.Services) != 1 || s.Services["demo/web"] == nil {
		t.Fatalf("after full map: got %v, want demo/web", s.Services)
	}
	// A delta without Service changes leaves them and their generation alone.
	if err := s.Apply(&api.NetworkMap{Version: 6, BaseVersion: 5}); err != nil {
		t.Fatal(err)
	}
	if s.ServicesGen != gen || len(s.Services) != 1 {
		t.Errorf("node-only delta: gen %d -> %d, %d services; want unchanged", gen, s.ServicesGen, len(s.Services))
	}
	if err := s.Apply(&api.NetworkMap{Version: 7, BaseVersion: 6, Services: []*api.Service{api2}, RemovedServices: []string{"demo/web"}}); err != nil {
		t.Fatal(err)
	}
	if s.ServicesGen == gen || len(s.Services) != 1 || s.Services["demo/api"] == nil {
		t.Errorf("service delta: got %v (gen %d), want only demo/api and a new generation", s.Services, s.ServicesGen)
	}
	// A full map replaces the Services.
	if err := s.Apply(&api.NetworkMap{Version: 9, Full: true, Self: self}); err != nil {
		t.Fatal(err)
	}
	if len(s.Services) != 0 {
		t.Errorf("full map without Services: got %v, want none", s.Services)
	}
}

package mapstate

import (
	"path/filepath"
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

// TestRefusedServices: a Service that does not validate is left out (and
// its error kept), the others stay; a valid version replaces it, and a
// save and load keeps the Services.
func TestRefusedServices(t *testing.T) {
	self := &api.Node{PublicKey: make([]byte, 32), Name: "self"}
	self.PublicKey[0] = 9
	good := &api.Service{Namespace: "demo", Name: "web", ClusterIps: []string{"10.96.0.10"},
		Ports: []*api.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}}}
	bad := &api.Service{Namespace: "demo", Name: "api", ClusterIps: []string{"not an address"}}
	s := New()
	if err := s.Apply(&api.NetworkMap{Version: 1, Full: true, Self: self, Services: []*api.Service{good, bad}}); err != nil {
		t.Fatal(err)
	}
	if s.Services["demo/web"] == nil || s.Services["demo/api"] != nil || s.Refused["demo/api"] == nil {
		t.Fatalf("got services %v refused %v; want web kept and api refused", s.Services, s.Refused)
	}
	fixed := &api.Service{Namespace: "demo", Name: "api", ClusterIps: []string{"10.96.0.20"}}
	if err := s.Apply(&api.NetworkMap{Version: 2, BaseVersion: 1, Services: []*api.Service{fixed}}); err != nil {
		t.Fatal(err)
	}
	if s.Services["demo/api"] == nil || s.Refused["demo/api"] != nil {
		t.Errorf("after the fix: services %v refused %v; want api kept", s.Services, s.Refused)
	}
	path := filepath.Join(t.TempDir(), "netmap.pb")
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Services) != 2 || back.Services["demo/web"].Ports[0].Port != 80 {
		t.Errorf("after save and load: got %v, want web and api", back.Services)
	}
}

package agent

import (
	"reflect"
	"testing"

	"github.com/edgewire/edgewire/node/identity"
	"github.com/edgewire/edgewire/node/mapstate"
	"github.com/edgewire/edgewire/node/netcheck"
)

// TestSTUNTargets: netcheck asks the second STUN ports, ICE does not
// (gathering twice per server would double its STUN traffic for the same
// candidate), and both ask each host:port once.
func TestSTUNTargets(t *testing.T) {
	a := &Agent{enr: identity.Enrolment{Coordinator: "198.51.100.1:8443"}, state: mapstate.New()}
	a.state.STUN = []mapstate.STUNServer{{Port: 3478, AltPort: 3479}, {Host: "relay.example.net", Port: 3478, AltPort: 3479}}
	a.state.Relays = []mapstate.RelayRegion{{ID: 1, Port: 8444, STUNPort: 3478}, {ID: 2, Host: "relay.example.net", Port: 8444, STUNPort: 3478},
		{ID: 3, Host: "r3.example.net", Port: 8444, STUNPort: 3478}, {ID: 4, Host: "r4.example.net", Port: 8444}}
	if got, want := a.stunServers(), []string{"198.51.100.1:3478", "relay.example.net:3478", "r3.example.net:3478"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ICE STUN servers: got %v, want %v", got, want)
	}
	want := []netcheck.Target{
		{Server: "198.51.100.1:3478"}, {Server: "198.51.100.1:3479", Alt: true},
		{Server: "relay.example.net:3478"}, {Server: "relay.example.net:3479", Alt: true},
		{Server: "r3.example.net:3478"},
	}
	if got := a.netcheckTargets(); !reflect.DeepEqual(got, want) {
		t.Errorf("netcheck targets: got %v, want %v", got, want)
	}
}

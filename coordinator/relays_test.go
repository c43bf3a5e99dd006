package coordinator

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
)

// TestLoadRelayMapSTUNAlt: a relay's second STUN port comes back as a
// STUN server with both ports, relays without one add none, and an alt
// port that cannot work is refused with the region named.
func TestLoadRelayMapSTUNAlt(t *testing.T) {
	k := base64.StdEncoding.EncodeToString(make([]byte, 32))
	region := func(id int, extra string) string {
		return `{"id": ` + string(rune('0'+id)) + `, "name": "r", "host": "relay.example.net", "port": 8444, "key": "` + k + `"` + extra + `}`
	}
	for _, tc := range []struct {
		name     string
		regions  []string
		wantSTUN []*api.StunServer
		wantErr  string
	}{
		{"no alt port", []string{region(2, `, "stun_port": 3478`)}, nil, ""},
		{"alt port", []string{region(2, `, "stun_port": 3478`), region(3, `, "stun_port": 3478, "stun_alt_port": 3479`)},
			[]*api.StunServer{{Host: "relay.example.net", Port: 3478, AltPort: 3479}}, ""},
		{"alt without stun_port", []string{region(2, `, "stun_alt_port": 3479`)}, nil, "region 0: stun_alt_port needs stun_port"},
		{"alt equal to stun_port", []string{region(2, `, "stun_port": 3478, "stun_alt_port": 3478`)}, nil, "must differ"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "relays.json")
			if err := os.WriteFile(path, []byte(`{"regions": [`+strings.Join(tc.regions, ",")+`]}`), 0o600); err != nil {
				t.Fatal(err)
			}
			regions, stun, err := LoadRelayMap(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(regions) != len(tc.regions) {
				t.Errorf("got %d regions, want %d", len(regions), len(tc.regions))
			}
			if len(stun) != len(tc.wantSTUN) {
				t.Fatalf("got STUN servers %v, want %v", stun, tc.wantSTUN)
			}
			for i := range stun {
				if !proto.Equal(stun[i], tc.wantSTUN[i]) {
					t.Errorf("STUN server %d: got %v, want %v", i, stun[i], tc.wantSTUN[i])
				}
			}
		})
	}
}

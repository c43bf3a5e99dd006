package coordinator

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/internal/atomicfile"
)

// RelayMap is the file given with --relay-map: relays beyond the one
// embedded in the coordinator.
//
//	{"regions": [{"id": 2, "name": "eu-west", "host": "relay-eu.example.com",
//	              "port": 8444, "key": "<base64 relay public key>", "stun_port": 3478,
//	              "stun_alt_port": 3479}]}
//
// stun_alt_port (optional) is the relay's second STUN port
// (edgewire-relay --stun-listen-alt); netcheck uses it to classify NATs.
type RelayMap struct {
	Regions []RelayRegion `json:"regions"`
}

// RelayRegion is one relay in a RelayMap.
type RelayRegion struct {
	ID       uint32 `json:"id"`
	Name     string `json:"name"`
	Host     string `json:"host"`
	Port     uint16 `json:"port"`
	Key      string `json:"key"`
	STUNPort uint16 `json:"stun_port"`
	// STUNAltPort is the relay's second STUN port; 0: none.
	STUNAltPort uint16 `json:"stun_alt_port,omitempty"`
}

// LoadRelayMap reads and validates a relay map file. Relays with a second
// STUN port are also returned as STUN servers (the map's relay regions
// have no field for it), for Config.RelaySTUN.
func LoadRelayMap(path string) ([]*api.RelayRegion, []*api.StunServer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var m RelayMap
	if err := dec.Decode(&m); err != nil {
		return nil, nil, fmt.Errorf("relay map %s: %w", path, err)
	}
	var out []*api.RelayRegion
	var stun []*api.StunServer
	for i, r := range m.Regions {
		key, err := base64.StdEncoding.DecodeString(r.Key)
		switch {
		case r.ID == 0:
			err = errors.New("id must be > 0")
		case r.Name == "":
			err = errors.New("name is required")
		case r.Host == "":
			err = errors.New("host is required")
		case r.Port == 0:
			err = errors.New("port is required")
		case err != nil || len(key) != 32:
			err = fmt.Errorf("key must be a base64 32-byte relay public key (edgewire-relay prints it)")
		case r.STUNAltPort != 0 && r.STUNPort == 0:
			err = errors.New("stun_alt_port needs stun_port")
		case r.STUNAltPort != 0 && r.STUNAltPort == r.STUNPort:
			err = errors.New("stun_alt_port must differ from stun_port")
		}
		if err != nil {
			return nil, nil, fmt.Errorf("relay map %s: region %d: %w", path, i, err)
		}
		out = append(out, &api.RelayRegion{Id: r.ID, Name: r.Name, Host: r.Host, Port: uint32(r.Port), Key: key, StunPort: uint32(r.STUNPort)})
		if r.STUNAltPort != 0 {
			stun = append(stun, &api.StunServer{Host: r.Host, Port: uint32(r.STUNPort), AltPort: uint32(r.STUNAltPort)})
		}
	}
	return out, stun, nil
}

// loadOrCreateTicketKey returns the Ed25519 key that signs relay tickets,
// creating it (and <path>.pub, for standalone relays) on first start.
func loadOrCreateTicketKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("ticket key %s: want a base64 %d-byte Ed25519 seed", path, ed25519.SeedSize)
		}
		return ed25519.NewKeyFromSeed(seed), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, []byte(base64.StdEncoding.EncodeToString(priv.Seed())+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path+".pub", []byte(base64.StdEncoding.EncodeToString(pub)+"\n"), 0o644); err != nil {
		return nil, err
	}
	return priv, nil
}

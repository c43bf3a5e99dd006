// Package identity keeps what makes an agent the same node across
// restarts: its WireGuard private key (generated on the node, mode 0600,
// never sent anywhere) and its enrolment with a coordinator (address,
// pinned CA, node name), all in the agent's state dir.
package identity

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/edgewire/edgewire/internal/atomicfile"
	"github.com/edgewire/edgewire/types/key"
)

const (
	keyFile        = "private.key"
	enrolmentFile  = "enrolment.json"
	enrolmentV1    = 1
	NetworkMapFile = "netmap.pb"
)

// LoadOrCreateKey returns the node's private key in dir, creating it on
// first use (mode 0600; it never leaves the node).
func LoadOrCreateKey(dir string) (key.Private, error) {
	return key.LoadOrCreatePrivateFile(filepath.Join(dir, keyFile))
}

// ticketFile holds the last relay ticket: 20 bytes of decimal expiry
// (unix seconds, space padded), a newline, then the ticket bytes.
const ticketFile = "relay.ticket"

// SaveTicket saves the relay ticket t expiring at exp in dir, so a
// restarted agent can use the relays while the coordinator is away.
func SaveTicket(dir string, t []byte, exp time.Time) error {
	b := append([]byte(fmt.Sprintf("%-20d\n", exp.Unix())), t...)
	return atomicfile.Write(filepath.Join(dir, ticketFile), b, 0o600)
}

// LoadTicket returns the saved relay ticket in dir if it has not expired
// at now; ok is false when there is none, it is malformed, or it expired.
func LoadTicket(dir string, now time.Time) (t []byte, exp time.Time, ok bool) {
	b, err := os.ReadFile(filepath.Join(dir, ticketFile))
	if err != nil || len(b) <= 21 || b[20] != '\n' {
		return nil, time.Time{}, false
	}
	secs, err := strconv.ParseInt(strings.TrimSpace(string(b[:20])), 10, 64)
	if err != nil {
		return nil, time.Time{}, false
	}
	exp = time.Unix(secs, 0)
	if !exp.After(now) {
		return nil, exp, false
	}
	return b[21:], exp, true
}

// Enrolment records a successful join.
type Enrolment struct {
	Version     int    `json:"v"`
	Coordinator string `json:"coordinator"` // host:port
	ServerName  string `json:"server_name"` // TLS name to verify
	CAPEM       string `json:"ca_pem"`      // CA the token pinned
	Name        string `json:"name"`        // node name as registered
	// Advertised is the routes the node registered (advertised, approved
	// or not), to tell whether the flags changed them; nil in enrolments
	// written before it was kept: unknown.
	Advertised []string `json:"advertised"`
}

// ErrNotEnrolled means the agent has not joined a coordinator yet.
var ErrNotEnrolled = errors.New("not joined to a coordinator yet (run `edgewire-agent join` or pass --token)")

// LoadEnrolment reads the enrolment in dir.
func LoadEnrolment(dir string) (Enrolment, error) {
	var e Enrolment
	b, err := os.ReadFile(filepath.Join(dir, enrolmentFile))
	if errors.Is(err, os.ErrNotExist) {
		return e, ErrNotEnrolled
	}
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("parse %s: %w", enrolmentFile, err)
	}
	if e.Version != enrolmentV1 {
		return e, fmt.Errorf("%s has version %d, this agent understands %d", enrolmentFile, e.Version, enrolmentV1)
	}
	if e.Coordinator == "" || e.CAPEM == "" {
		return e, fmt.Errorf("%s is incomplete", enrolmentFile)
	}
	return e, nil
}

// SaveEnrolment writes e to dir.
func SaveEnrolment(dir string, e Enrolment) error {
	e.Version = enrolmentV1
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, enrolmentFile), append(b, '\n'), 0o600)
}

// ForgetOverlay removes what the state dir holds of the overlay the node
// was enrolled in, but its key and enrolment: the last network map, the
// relay ticket and the peers' direct endpoints. A node that re-joins
// another overlay must not bring them along.
func ForgetOverlay(dir string) error {
	for _, f := range []string{NetworkMapFile, ticketFile, lastDirectFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// lastDirectFile holds each peer's last direct endpoint, so a node
// restarted while the coordinator and relays are unreachable tries them
// at once.
const lastDirectFile = "last-direct.json"

// LastDirect is a peer's last direct endpoint and when it was confirmed.
type LastDirect struct {
	Endpoint netip.AddrPort `json:"endpoint"`
	At       time.Time      `json:"at"`
}

type lastDirectDoc struct {
	Version int                   `json:"v"`
	Peers   map[string]LastDirect `json:"peers"` // by the peer's key (base64)
}

// SaveLastDirect saves peers' last direct endpoints in dir.
func SaveLastDirect(dir string, eps map[key.Public]LastDirect) error {
	doc := lastDirectDoc{Version: 1, Peers: map[string]LastDirect{}}
	for k, e := range eps {
		doc.Peers[k.String()] = e
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, lastDirectFile), append(b, '\n'), 0o600)
}

// LoadLastDirect returns the saved last direct endpoints in dir no older
// than maxAge at now. A missing file is no error; entries that do not
// parse are skipped.
func LoadLastDirect(dir string, now time.Time, maxAge time.Duration) (map[key.Public]LastDirect, error) {
	out := map[key.Public]LastDirect{}
	b, err := os.ReadFile(filepath.Join(dir, lastDirectFile))
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, err
	}
	var doc lastDirectDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return out, fmt.Errorf("parse %s: %w", lastDirectFile, err)
	}
	if doc.Version != 1 {
		return out, fmt.Errorf("%s has version %d, this agent understands 1", lastDirectFile, doc.Version)
	}
	for ks, e := range doc.Peers {
		k, err := key.ParsePublic(ks)
		if err != nil || !e.Endpoint.IsValid() || e.Endpoint.Port() == 0 || e.At.After(now) || now.Sub(e.At) > maxAge {
			continue
		}
		out[k] = e
	}
	return out, nil
}

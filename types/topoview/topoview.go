// Package topoview is the fleet's connectivity as the coordinator sees it
// from its agents' path reports: nodes (with their NAT verdict and home
// relay), the pairs that talk (direct or relayed, RTT, since when), the
// relays, and a summary. The coordinator builds it (coordinator/topology),
// serves it as JSON and as a page, and the CLI draws it (`edgewire
// graph`); this package is the shape they share, with no behaviour of
// either.
package topoview

import "time"

// Paths a pair can have.
const (
	PathDirect = "direct"
	PathRelay  = "relay"
	PathNone   = "none"
)

// View is the whole picture at one moment. Field names are the JSON API's
// and stable; every field is always present.
type View struct {
	GeneratedAt time.Time `json:"generated_at"`
	Nodes       []Node    `json:"nodes"`  // by name
	Pairs       []Pair    `json:"pairs"`  // active pairs, by (a, b)
	Relays      []Relay   `json:"relays"` // by region id
	Summary     Summary   `json:"summary"`
}

// Node is one registered node.
type Node struct {
	Name      string   `json:"name"`
	Key       string   `json:"key"` // short form, as the CLI and logs print it
	Addresses []string `json:"addresses"`
	Online    bool     `json:"online"`
	Version   string   `json:"version"`
	Tags      []string `json:"tags"`
	// From the node's last path report; Reported is null when it sent
	// none (an older agent, or not yet).
	Reported  *time.Time `json:"reported"`
	NAT       NAT        `json:"nat"`
	HomeRelay string     `json:"home_relay"`
	// HomeRelayMs is the latency to the home relay (0: not measured).
	HomeRelayMs float64 `json:"home_relay_ms"`
}

// NAT is a node's NAT verdict (its netcheck).
type NAT struct {
	Measured bool `json:"measured"`
	UDP      bool `json:"udp"` // UDP gets out
	// Mapping: endpoint-independent, endpoint-dependent, unknown ("" when
	// not measured). NoNAT: the node's public address is its own.
	Mapping    string `json:"mapping"`
	NoNAT      bool   `json:"no_nat"`
	PublicAddr string `json:"public_addr"`
}

// Kind names the NAT in one word for pictures and gauges: none (public),
// eim, symmetric, blocked (no UDP), unknown.
func (n NAT) Kind() string {
	switch {
	case !n.Measured:
		return "unknown"
	case !n.UDP:
		return "blocked"
	case n.NoNAT:
		return "none"
	case n.Mapping == "endpoint-independent":
		return "eim"
	case n.Mapping == "endpoint-dependent":
		return "symmetric"
	}
	return "unknown"
}

// Pair is two nodes that talk, as both (or one) of them report it.
type Pair struct {
	A string `json:"a"` // node names, A < B
	B string `json:"b"`
	// Path is the pair's: relay if either side sends through a relay,
	// else direct if either side is direct, else none.
	Path  string  `json:"path"`
	Relay string  `json:"relay"` // region name, with relay
	RTTMs float64 `json:"rtt_ms"`
	// Since is when the pair got its path (the later side's).
	Since time.Time `json:"since"`
	// FromA and FromB are each side's own report; null: that side
	// reported nothing of the other.
	FromA *Side `json:"from_a"`
	FromB *Side `json:"from_b"`
}

// Side is one node's view of a pair.
type Side struct {
	Path        string    `json:"path"`
	Relay       string    `json:"relay"`
	Local       string    `json:"local_candidate"` // ICE candidate types: host, srflx, prflx, relay
	Remote      string    `json:"remote_candidate"`
	RTTMs       float64   `json:"rtt_ms"`
	Since       time.Time `json:"since"`
	LastFailure string    `json:"last_failure"` // why the last ICE session failed, if it did
}

// Relay is one relay region.
type Relay struct {
	ID   uint32 `json:"id"`
	Name string `json:"name"`
	// HomeOf counts the nodes whose home relay it is (from their
	// reports); Relayed the active pairs relayed through it.
	HomeOf  int `json:"home_of"`
	Relayed int `json:"relayed"`
	// Stats is what the coordinator knows of the relay's traffic: its
	// embedded relay's counters; null for a relay it does not run.
	Stats *RelayStats `json:"stats"`
}

// RelayStats are a relay's counters.
type RelayStats struct {
	Clients      int     `json:"clients"`
	BytesPerSec  float64 `json:"bytes_per_sec"` // forwarded, over the last interval
	BytesTotal   uint64  `json:"bytes_total"`
	DroppedTotal uint64  `json:"dropped_total"`
}

// Summary counts the active pairs by path, for the fleet and per tag.
type Summary struct {
	Nodes       int         `json:"nodes"`
	Online      int         `json:"online"`
	Pairs       Counts      `json:"pairs"`
	ByTag       []TagCounts `json:"by_tag"` // pairs with a node of the tag, by tag
	NATKinds    []KindCount `json:"nat_kinds"`
	DirectShare float64     `json:"direct_share"` // direct / active pairs, 0 with none
}

// Counts counts pairs by path.
type Counts struct {
	Total  int `json:"total"`
	Direct int `json:"direct"`
	Relay  int `json:"relay"`
	None   int `json:"none"`
}

// Add counts one pair's path.
func (c *Counts) Add(path string) {
	c.Total++
	switch path {
	case PathDirect:
		c.Direct++
	case PathRelay:
		c.Relay++
	default:
		c.None++
	}
}

// TagCounts is Counts for the pairs touching nodes of one tag.
type TagCounts struct {
	Tag    string `json:"tag"`
	Counts Counts `json:"pairs"`
}

// KindCount counts nodes of one NAT kind (NAT.Kind).
type KindCount struct {
	Kind  string `json:"kind"`
	Nodes int    `json:"nodes"`
}

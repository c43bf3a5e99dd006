package topoweb

import (
	"fmt"
	"html/template"
	"math"
	"time"

	"github.com/edgewire/edgewire/types/topoview"
)

// Picture bounds: a circle of more nodes than this is unreadable, and
// the page says to use `edgewire graph` instead.
const maxPictureNodes = 300

// minPictureWidth is the least width (CSS pixels) the picture is shown at.
const minPictureWidth = 520

// pageData is what the templates render: the view, turned into rows and
// a picture once, here, so the templates only print.
type pageData struct {
	View      topoview.View
	Generated string
	Refresh   int // seconds between the script's reloads
	Nodes     []nodeRow
	Pairs     []pairRow
	Relays    []relayRow
	Share     string // direct share, "73%"
	Picture   *picture
	TooMany   bool // too many nodes for a picture
}

type nodeRow struct {
	topoview.Node
	Kind     string // NAT.Kind
	NATWords string
	Home     string // "fra (11.5 ms)"
	Reported string // "12s ago" or "never"
}

type pairRow struct {
	topoview.Pair
	PathWords string // "direct", "relay via fra"
	RTT       string
	Since     string // age at the view's time
	SideA     sideCell
	SideB     sideCell
}

type sideCell struct {
	Reported   bool
	Candidates string // "srflx → prflx"
	Failure    string
}

type relayRow struct {
	topoview.Relay
	Clients, Rate, Bytes, Drops string // "—" without stats
}

// build turns a view into what the templates print.
func build(v topoview.View) pageData {
	d := pageData{View: v, Generated: v.GeneratedAt.UTC().Format(time.RFC3339), Refresh: 2}
	if len(v.Nodes) > 500 {
		d.Refresh = 10 // a big fleet's page is large; don't redraw it constantly
	}
	d.Share = fmt.Sprintf("%.0f%%", 100*v.Summary.DirectShare)
	for _, n := range v.Nodes {
		r := nodeRow{Node: n, Kind: n.NAT.Kind(), NATWords: natWords(n.NAT), Home: "—", Reported: "never"}
		if n.HomeRelay != "" {
			r.Home = n.HomeRelay
			if n.HomeRelayMs > 0 {
				r.Home += " (" + ms(n.HomeRelayMs) + ")"
			}
		}
		if n.Reported != nil {
			r.Reported = ago(*n.Reported, v.GeneratedAt)
		}
		d.Nodes = append(d.Nodes, r)
	}
	for _, p := range v.Pairs {
		r := pairRow{Pair: p, PathWords: pathWords(p.Path, p.Relay), RTT: "—", Since: ago(p.Since, v.GeneratedAt),
			SideA: side(p.FromA), SideB: side(p.FromB)}
		if p.RTTMs > 0 {
			r.RTT = ms(p.RTTMs)
		}
		d.Pairs = append(d.Pairs, r)
	}
	for _, rl := range v.Relays {
		r := relayRow{Relay: rl, Clients: "—", Rate: "—", Bytes: "—", Drops: "—"}
		if s := rl.Stats; s != nil {
			r.Clients = fmt.Sprint(s.Clients)
			r.Rate = fmtBytes(s.BytesPerSec) + "/s"
			r.Bytes = fmtBytes(float64(s.BytesTotal))
			r.Drops = fmt.Sprint(s.DroppedTotal)
		}
		d.Relays = append(d.Relays, r)
	}
	if len(v.Nodes) <= maxPictureNodes {
		d.Picture = draw(v)
	} else {
		d.TooMany = true
	}
	return d
}

func side(s *topoview.Side) sideCell {
	if s == nil {
		return sideCell{}
	}
	c := sideCell{Reported: true, Failure: s.LastFailure}
	if s.Local != "" || s.Remote != "" {
		c.Candidates = orDash(s.Local) + " → " + orDash(s.Remote)
	}
	return c
}

// natWords says what a NAT verdict means for direct paths.
func natWords(n topoview.NAT) string {
	switch n.Kind() {
	case "none":
		return "no NAT (public address)"
	case "eim":
		return "endpoint-independent NAT"
	case "symmetric":
		return "symmetric NAT"
	case "blocked":
		return "UDP blocked"
	}
	if !n.Measured {
		return "not measured"
	}
	return "unknown NAT"
}

func pathWords(path, relay string) string {
	if path == topoview.PathRelay && relay != "" {
		return "relay via " + relay
	}
	return path
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func ms(f float64) string {
	if f < 10 {
		return fmt.Sprintf("%.1f ms", f)
	}
	return fmt.Sprintf("%.0f ms", f)
}

// ago is the age of t at now, to the second: "4s", "3m12s", "2h5m".
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "—"
	}
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds ago", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func fmtBytes(f float64) string {
	const unit = 1024
	if f < unit {
		return fmt.Sprintf("%.0f B", f)
	}
	exp, div := 0, float64(unit)
	for n := f / unit; n >= unit && exp < 4; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", f/div, "KMGTP"[exp])
}

// picture is the topology drawn as SVG: nodes on a circle in name order
// (so a node keeps its place from one refresh to the next), one edge per
// active pair.
type picture struct {
	Size float64 // the square viewBox's side
	// Width it is shown at: small fleets are scaled up to stay legible.
	Width float64
	// RelayLabels: relayed links carry the relay's name (only when
	// there are several relays to tell apart).
	RelayLabels bool
	Nodes       []pictureNode
	Edges       []pictureEdge
}

type pictureNode struct {
	Name, Kind string
	Online     bool
	X, Y       float64
	LX, LY     float64 // label
	Anchor     string  // text-anchor of the label
	Title      string
}

type pictureEdge struct {
	A, B, Path, Relay string
	X1, Y1, X2, Y2    float64
	MX, MY            float64 // middle, for the relay's name
	Title             string
}

// draw lays the view out: radius grows with the node count, labels sit
// outside the circle.
func draw(v topoview.View) *picture {
	n := len(v.Nodes)
	r := math.Max(110, float64(n)*9)
	margin := 70.0 // room for labels
	p := &picture{Size: 2 * (r + margin), RelayLabels: len(v.Relays) > 1}
	p.Width = math.Max(p.Size, minPictureWidth)
	c := r + margin
	at := make(map[string]int, n)
	for i, nd := range v.Nodes {
		a := -math.Pi/2 + 2*math.Pi*float64(i)/float64(n)
		x, y := c+r*math.Cos(a), c+r*math.Sin(a)
		if n == 1 {
			x, y = c, c
		}
		pn := pictureNode{Name: nd.Name, Kind: nd.NAT.Kind(), Online: nd.Online, X: x, Y: y,
			LX: c + (r+16)*math.Cos(a), LY: c + (r+16)*math.Sin(a) + 4, Anchor: "middle",
			Title: nd.Name + ": " + natWords(nd.NAT) + map[bool]string{true: ", online", false: ", offline"}[nd.Online]}
		if n == 1 {
			pn.LY = y + 26
		} else if cos := math.Cos(a); cos > 0.2 {
			pn.Anchor = "start"
		} else if cos < -0.2 {
			pn.Anchor = "end"
		}
		at[nd.Name] = i
		p.Nodes = append(p.Nodes, pn)
	}
	for _, pr := range v.Pairs {
		ia, oka := at[pr.A]
		ib, okb := at[pr.B]
		if !oka || !okb {
			continue
		}
		a, b := p.Nodes[ia], p.Nodes[ib]
		e := pictureEdge{A: pr.A, B: pr.B, Path: pr.Path, Relay: pr.Relay, X1: a.X, Y1: a.Y, X2: b.X, Y2: b.Y,
			MX: (a.X + b.X) / 2, MY: (a.Y+b.Y)/2 - 4, Title: pr.A + " – " + pr.B + ": " + pathWords(pr.Path, pr.Relay)}
		if pr.RTTMs > 0 {
			e.Title += ", " + ms(pr.RTTMs)
		}
		p.Edges = append(p.Edges, e)
	}
	return p
}

var funcs = template.FuncMap{
	"f1": func(f float64) string { return fmt.Sprintf("%.1f", f) },
}

package kubestore

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/types/key"
)

// Group and version of edgewire's resources.
const (
	Group   = "edgewire.io"
	Version = "v1alpha1"
)

// Kinds of edgewire's resources.
const (
	kindNode  = "EdgewireNode"
	kindToken = "EdgewireToken"
	kindClaim = "EdgewireClaim"
)

// The resources the store keeps.
var (
	nodesGVR  = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "edgewirenodes"}
	tokensGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "edgewiretokens"}
	claimsGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "edgewireclaims"}
)

// nodeSpec is EdgewireNode.spec.
type nodeSpec struct {
	PublicKey        string   `json:"publicKey"`
	Name             string   `json:"name"`
	Hostname         string   `json:"hostname,omitempty"`
	Addresses        []string `json:"addresses,omitempty"`
	Routes           []string `json:"routes,omitempty"`
	AdvertisedRoutes []string `json:"advertisedRoutes,omitempty"`
	KubeNode         string   `json:"kubernetesNode,omitempty"`
	Tags             []string `json:"tags,omitempty"`
	TokenID          string   `json:"tokenID,omitempty"`
	CreatedAt        string   `json:"createdAt,omitempty"`
	LastSeen         string   `json:"lastSeen,omitempty"`
}

// tokenSpec is EdgewireToken.spec.
type tokenSpec struct {
	SecretHash string   `json:"secretHash"`
	CreatedAt  string   `json:"createdAt,omitempty"`
	ExpiresAt  string   `json:"expiresAt,omitempty"`
	Reusable   bool     `json:"reusable,omitempty"`
	MaxUses    int      `json:"maxUses,omitempty"`
	Uses       int      `json:"uses,omitempty"`
	Revoked    bool     `json:"revoked,omitempty"`
	Tags       []string `json:"tags,omitempty"`
	Routes     []string `json:"routes,omitempty"`
	KubeNode   string   `json:"kubernetesNode,omitempty"`
}

// claimSpec is EdgewireClaim.spec.
type claimSpec struct {
	Node string `json:"node"` // the holder's object name (hex key)
}

// nodeObjectName is a node's object name: the hex of its key (a DNS
// subdomain; base64 is not).
func nodeObjectName(k key.Public) string { return hex.EncodeToString(k[:]) }

func parseNodeObjectName(s string) (key.Public, error) {
	var k key.Public
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(k) || s != strings.ToLower(s) {
		return k, fmt.Errorf("object name %q is not the hex of a node key", s)
	}
	copy(k[:], b)
	return k, nil
}

// nameClaim and addrClaim are the claim object names for a node name and
// an overlay address. IPv6 is written expanded, colons as dashes, so
// every label starts and ends with a hex digit.
func nameClaim(name string) string { return "name." + name }

func addrClaim(a netip.Addr) string {
	if a.Is4() {
		return "addr." + a.String()
	}
	return "addr." + strings.ReplaceAll(a.StringExpanded(), ":", "-")
}

func newObject(kind, name string, spec any) (*unstructured.Unstructured, error) {
	m, err := toMap(spec)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: map[string]any{"spec": m}}
	u.SetAPIVersion(Group + "/" + Version)
	u.SetKind(kind)
	u.SetName(name)
	return u, nil
}

func toMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(b, &m)
}

// specOf decodes an object's spec into v, refusing unknown fields: an
// object this build cannot read whole is not read at all.
func specOf(u *unstructured.Unstructured, v any) error {
	spec, ok := u.Object["spec"].(map[string]any)
	if !ok {
		return errors.New("no spec")
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

func formatAll[T fmt.Stringer](xs []T) []string {
	var out []string
	for _, x := range xs {
		out = append(out, x.String())
	}
	return out
}

func parseAll[T any](what string, ss []string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, s := range ss {
		x, err := parse(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", what, s, err)
		}
		out = append(out, x)
	}
	return out, nil
}

func encodeNode(n store.Node) (*unstructured.Unstructured, error) {
	return newObject(kindNode, nodeObjectName(n.Key), nodeSpec{
		PublicKey:        n.Key.String(),
		Name:             n.Name,
		Hostname:         n.Hostname,
		Addresses:        formatAll(n.Addresses),
		Routes:           formatAll(n.Routes),
		AdvertisedRoutes: formatAll(n.AdvertisedRoutes),
		KubeNode:         n.KubeNode,
		Tags:             n.Tags,
		TokenID:          n.TokenID,
		CreatedAt:        formatTime(n.CreatedAt),
		LastSeen:         formatTime(n.LastSeen),
	})
}

// decodeNode reads and checks a node object: its name is its key, and
// everything a hand edit could break is checked, so a bad object is
// reported and skipped instead of reaching a map.
func decodeNode(u *unstructured.Unstructured) (store.Node, error) {
	nk, err := parseNodeObjectName(u.GetName())
	if err != nil {
		return store.Node{}, err
	}
	var s nodeSpec
	if err := specOf(u, &s); err != nil {
		return store.Node{}, fmt.Errorf("spec: %w", err)
	}
	if pk, err := key.ParsePublic(s.PublicKey); err != nil || pk != nk {
		return store.Node{}, fmt.Errorf("spec.publicKey %q is not the key the object is named by", s.PublicKey)
	}
	n := store.Node{Key: nk, Name: s.Name, Hostname: s.Hostname, KubeNode: s.KubeNode, Tags: s.Tags, TokenID: s.TokenID}
	if s.Name == "" {
		return store.Node{}, errors.New("spec.name is empty")
	}
	if n.Addresses, err = parseAll("spec.addresses", s.Addresses, parseAddr); err != nil {
		return store.Node{}, err
	}
	if n.Routes, err = parseAll("spec.routes", s.Routes, parsePrefix); err != nil {
		return store.Node{}, err
	}
	if n.AdvertisedRoutes, err = parseAll("spec.advertisedRoutes", s.AdvertisedRoutes, parsePrefix); err != nil {
		return store.Node{}, err
	}
	if n.CreatedAt, err = parseTime(s.CreatedAt); err != nil {
		return store.Node{}, fmt.Errorf("spec.createdAt: %w", err)
	}
	if n.LastSeen, err = parseTime(s.LastSeen); err != nil {
		return store.Node{}, fmt.Errorf("spec.lastSeen: %w", err)
	}
	return n, nil
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, err
	}
	if a.Zone() != "" || a.Is4In6() || a.String() != s {
		return netip.Addr{}, errors.New("not a canonical overlay address")
	}
	return a, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, err
	}
	if p != p.Masked() {
		return netip.Prefix{}, errors.New("host bits set")
	}
	return p, nil
}

func encodeToken(t store.Token) (*unstructured.Unstructured, error) {
	return newObject(kindToken, t.ID, tokenSpec{
		SecretHash: hex.EncodeToString(t.SecretHash[:]),
		CreatedAt:  formatTime(t.CreatedAt),
		ExpiresAt:  formatTime(t.ExpiresAt),
		Reusable:   t.Reusable,
		MaxUses:    t.MaxUses,
		Uses:       t.Uses,
		Revoked:    t.Revoked,
		Tags:       t.Tags,
		Routes:     formatAll(t.Routes),
		KubeNode:   t.KubeNode,
	})
}

func decodeToken(u *unstructured.Unstructured) (store.Token, error) {
	var s tokenSpec
	if err := specOf(u, &s); err != nil {
		return store.Token{}, fmt.Errorf("spec: %w", err)
	}
	t := store.Token{ID: u.GetName(), Reusable: s.Reusable, MaxUses: s.MaxUses, Uses: s.Uses, Revoked: s.Revoked, Tags: s.Tags, KubeNode: s.KubeNode}
	h, err := hex.DecodeString(s.SecretHash)
	if err != nil || len(h) != len(t.SecretHash) {
		return store.Token{}, errors.New("spec.secretHash is not 64 hex digits")
	}
	copy(t.SecretHash[:], h)
	if s.MaxUses < 0 || s.Uses < 0 {
		return store.Token{}, errors.New("negative use count")
	}
	if t.CreatedAt, err = parseTime(s.CreatedAt); err != nil {
		return store.Token{}, fmt.Errorf("spec.createdAt: %w", err)
	}
	if t.ExpiresAt, err = parseTime(s.ExpiresAt); err != nil {
		return store.Token{}, fmt.Errorf("spec.expiresAt: %w", err)
	}
	if t.Routes, err = parseAll("spec.routes", s.Routes, parsePrefix); err != nil {
		return store.Token{}, err
	}
	return t, nil
}

func encodeClaim(name string, holder key.Public) (*unstructured.Unstructured, error) {
	return newObject(kindClaim, name, claimSpec{Node: nodeObjectName(holder)})
}

func decodeClaim(u *unstructured.Unstructured) (key.Public, error) {
	var s claimSpec
	if err := specOf(u, &s); err != nil {
		return key.Public{}, fmt.Errorf("spec: %w", err)
	}
	return parseNodeObjectName(s.Node)
}

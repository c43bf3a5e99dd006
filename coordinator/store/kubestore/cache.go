package kubestore

import (
	"cmp"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/types/key"
)

// cache holds decoded objects with the resourceVersion they were read at.
// A bad entry exists in the API but did not decode: reads skip it, a
// write replaces it.
type cache struct {
	nodes  map[key.Public]nodeEntry
	tokens map[string]tokenEntry
	claims map[string]claimEntry
	// indexes over good nodes, and claims by holder; kept by the
	// setters below, so a commit costs what it changed, not the fleet
	byName   map[string]key.Public
	byAddr   map[netip.Addr]key.Public
	byHolder map[key.Public][]string
}

type nodeEntry struct {
	n   store.Node
	rv  string
	bad bool
}

type tokenEntry struct {
	t   store.Token
	rv  string
	bad bool
}

type claimEntry struct {
	holder key.Public
	rv     string
	bad    bool
}

func newCache() *cache {
	return &cache{nodes: map[key.Public]nodeEntry{}, tokens: map[string]tokenEntry{}, claims: map[string]claimEntry{},
		byName: map[string]key.Public{}, byAddr: map[netip.Addr]key.Public{}, byHolder: map[key.Public][]string{}}
}

// reindex rebuilds the node indexes (after a load). A node whose name or
// address another good node holds (two objects edited by hand into one
// address) is reported and marked bad: the first by name keeps it.
func (c *cache) reindex(log *slog.Logger) {
	c.byName = map[string]key.Public{}
	c.byAddr = map[netip.Addr]key.Public{}
	keys := make([]key.Public, 0, len(c.nodes))
	for k, e := range c.nodes {
		if !e.bad {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b key.Public) int { return cmp.Compare(c.nodes[a].n.Name, c.nodes[b].n.Name) })
	for _, k := range keys {
		c.index(k, log)
	}
}

// index adds a good node to the indexes, or marks it bad if another
// holds its name or an address.
func (c *cache) index(k key.Public, log *slog.Logger) {
	e := c.nodes[k]
	clash := ""
	if h, ok := c.byName[e.n.Name]; ok && h != k {
		clash = "name " + e.n.Name
	}
	for _, a := range e.n.Addresses {
		if h, ok := c.byAddr[a]; ok && h != k {
			clash = "address " + a.String()
		}
	}
	if clash != "" {
		log.Error("ignoring a stored node: another node holds its "+clash+"; delete one of the EdgewireNode objects", "object", nodeObjectName(k))
		e.bad = true
		c.nodes[k] = e
		return
	}
	c.byName[e.n.Name] = k
	for _, a := range e.n.Addresses {
		c.byAddr[a] = k
	}
}

// unindex removes a node's index entries.
func (c *cache) unindex(k key.Public) {
	old, ok := c.nodes[k]
	if !ok || old.bad {
		return
	}
	if c.byName[old.n.Name] == k {
		delete(c.byName, old.n.Name)
	}
	for _, a := range old.n.Addresses {
		if c.byAddr[a] == k {
			delete(c.byAddr, a)
		}
	}
}

// setNode replaces one node's entry.
func (c *cache) setNode(k key.Public, e nodeEntry, log *slog.Logger) {
	c.unindex(k)
	c.nodes[k] = e
	if !e.bad {
		c.index(k, log)
	}
}

// setNodes replaces several nodes' entries at once (a nil entry drops
// the node): all leave the indexes before any enters them, so a name or
// address moving from one of them to another is no clash, whatever the
// order.
func (c *cache) setNodes(nodes map[key.Public]*nodeEntry, log *slog.Logger) {
	for k := range nodes {
		c.unindex(k)
	}
	for k, e := range nodes {
		if e == nil {
			delete(c.nodes, k)
			continue
		}
		c.nodes[k] = *e
	}
	for k, e := range nodes {
		if e != nil && !e.bad {
			c.index(k, log)
		}
	}
}

// dropNode removes one node's entry.
func (c *cache) dropNode(k key.Public) {
	c.unindex(k)
	delete(c.nodes, k)
}

// setClaim replaces one claim's entry.
func (c *cache) setClaim(name string, e claimEntry) {
	c.dropClaim(name)
	c.claims[name] = e
	if !e.bad {
		c.byHolder[e.holder] = append(c.byHolder[e.holder], name)
	}
}

// dropClaim removes one claim's entry.
func (c *cache) dropClaim(name string) {
	old, ok := c.claims[name]
	if !ok {
		return
	}
	delete(c.claims, name)
	if old.bad {
		return
	}
	held := slices.DeleteFunc(c.byHolder[old.holder], func(n string) bool { return n == name })
	if len(held) == 0 {
		delete(c.byHolder, old.holder)
	} else {
		c.byHolder[old.holder] = held
	}
}

// held returns the claims k holds, sorted.
func (c *cache) held(k key.Public) []string {
	out := slices.Clone(c.byHolder[k])
	slices.Sort(out)
	return out
}

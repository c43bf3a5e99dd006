package kubestore

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/edgewire/edgewire/coordinator/store"
)

// Presence is kept in presenceShards EdgewirePresence objects, a node in
// shard key[0] % presenceShards: at 10,000 nodes a shard is about 100 kB,
// well under etcd's object limit up to about 100,000 nodes, and a save
// writes only the shards whose content changed (or that were last
// written more than presenceRewrite ago, so every shard's save time stays
// recent). With presence saved every 5 s that is at most 1.6 writes/s,
// whatever the fleet does.
const (
	presenceShards  = 8
	presenceRewrite = 20 * time.Second
	kindPresence    = "EdgewirePresence"
	// fieldManager names the store's server-side applies.
	fieldManager = "edgewire-coordinator"
)

var presenceGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "edgewirepresences"}

var _ store.PresenceKeeper = (*Store)(nil)

// presenceState is what the last successful save of each shard wrote.
type presenceState struct {
	mu      sync.Mutex // serializes SavePresence
	content [presenceShards][]byte
	written [presenceShards]time.Time
}

func presenceName(shard int) string { return "presence-" + strconv.Itoa(shard) }

// SavePresence writes the shards of p that changed since their last
// save, or whose last save is older than presenceRewrite, each with one
// server-side apply (no read first, no conflict to retry: only the
// serving replica saves presence).
func (s *Store) SavePresence(ctx context.Context, p store.Presence, at time.Time) error {
	var shards [presenceShards]store.Presence
	for i := range shards {
		shards[i] = store.Presence{}
	}
	for k, eps := range p {
		shards[int(k[0])%presenceShards][k] = eps
	}
	ps := &s.presence
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for i, sh := range shards {
		b := store.EncodePresence(sh, at)
		content := b[store.PresenceHeaderLen:] // the presence, without its save time
		if bytes.Equal(content, ps.content[i]) && at.Sub(ps.written[i]) < presenceRewrite {
			continue
		}
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": Group + "/" + Version,
			"kind":       kindPresence,
			"metadata":   map[string]any{"name": presenceName(i), "namespace": s.cfg.Namespace},
			"spec": map[string]any{
				"data":    base64.StdEncoding.EncodeToString(b),
				"nodes":   int64(len(sh)),
				"savedAt": at.UTC().Format(time.RFC3339),
			},
		}}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		_, err := s.cfg.Client.Resource(presenceGVR).Namespace(s.cfg.Namespace).Apply(cctx, presenceName(i), obj,
			metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
		cancel()
		if err != nil {
			return s.apiErr("save presence", err)
		}
		ps.content[i], ps.written[i] = bytes.Clone(content), at
	}
	return nil
}

// LoadPresence lists the presence shards. A shard that does not decode
// (edited by hand) is reported, counted and left out: its nodes start
// offline, which costs them a full map, nothing else.
func (s *Store) LoadPresence(ctx context.Context) (store.Presence, time.Time, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	l, err := s.cfg.Client.Resource(presenceGVR).Namespace(s.cfg.Namespace).List(cctx, metav1.ListOptions{})
	cancel()
	if err != nil {
		return nil, time.Time{}, s.apiErr("load presence", err)
	}
	p := store.Presence{}
	var oldest time.Time
	for i := range l.Items {
		u := &l.Items[i]
		at, err := decodePresence(u, p)
		if err != nil {
			s.reject(kindPresence, u.GetName(), err)
			continue
		}
		if oldest.IsZero() || at.Before(oldest) {
			oldest = at
		}
	}
	return p, oldest, nil
}

func decodePresence(u *unstructured.Unstructured, into store.Presence) (time.Time, error) {
	name := u.GetName()
	n, err := strconv.Atoi(strings.TrimPrefix(name, "presence-"))
	if !strings.HasPrefix(name, "presence-") || err != nil || n < 0 || n >= presenceShards || presenceName(n) != name {
		return time.Time{}, fmt.Errorf("not a presence shard name (want presence-0 to presence-%d)", presenceShards-1)
	}
	data, _, err := unstructured.NestedString(u.Object, "spec", "data")
	if err != nil {
		return time.Time{}, fmt.Errorf("spec.data: %w", err)
	}
	b, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return time.Time{}, fmt.Errorf("spec.data: %w", err)
	}
	shard := store.Presence{}
	at, err := store.DecodePresence(b, shard)
	if err != nil {
		return time.Time{}, err
	}
	for k := range shard {
		if int(k[0])%presenceShards != n {
			return time.Time{}, fmt.Errorf("node %s is not in this shard", k.Short())
		}
	}
	for k, eps := range shard {
		into[k] = eps
	}
	return at, nil
}

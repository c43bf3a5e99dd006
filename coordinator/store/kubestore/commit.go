package kubestore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/edgewire/edgewire/types/key"
)

// applied is one write done by a commit, with what undoes it.
type applied struct {
	gvr  schema.GroupVersionResource
	name string
	rv   string                     // after the write; "" after a delete
	prev *unstructured.Unstructured // the object before; nil: it did not exist
}

// commit writes a transaction's changes in the order the package comment
// gives. A *conflict means fn should run again on fresher data; the
// writes done before it are undone.
func (s *Store) commit(ctx context.Context, t *tx) error {
	if len(t.nodes) == 0 && len(t.tokens) == 0 {
		return nil
	}
	var done []applied
	undo := func() {
		for i := len(done) - 1; i >= 0; i-- {
			if err := s.undo(ctx, done[i]); err != nil {
				s.log.Warn("could not undo a partial write; a claim no node holds is cleared by the next writer that needs it", "object", done[i].name, "err", err)
			}
		}
	}

	// Claims: what the transaction's nodes hold after it, minus before.
	var create, free []claimWrite
	for _, k := range slices.SortedFunc(maps.Keys(t.nodes), cmpKey) {
		want := claimsOf(t.nodes[k])
		have := s.claimsHeld(k)
		for _, c := range want {
			if !slices.Contains(have, c) {
				create = append(create, claimWrite{name: c, holder: k})
			}
		}
		for _, c := range have {
			if !slices.Contains(want, c) {
				free = append(free, claimWrite{name: c, holder: k})
			}
		}
	}
	// A claim one node of the transaction frees and another takes (a
	// name or address moving) is handed over, not freed and created.
	freeing := map[string]key.Public{}
	for _, c := range free {
		freeing[c.name] = c.holder
	}
	claimed := map[string]string{} // claim -> rv
	for _, c := range create {
		var a applied
		var err error
		if from, ok := freeing[c.name]; ok {
			a, err = s.handOver(ctx, c, from)
			free = slices.DeleteFunc(free, func(f claimWrite) bool { return f.name == c.name })
		} else {
			var rv string
			rv, err = s.claim(ctx, c)
			a = applied{gvr: claimsGVR, name: c.name, rv: rv}
		}
		if err != nil {
			undo()
			return err
		}
		claimed[c.name] = a.rv
		done = append(done, a)
	}

	tokenRV := map[string]string{}
	for _, id := range slices.Sorted(maps.Keys(t.tokens)) {
		s.rmu.RLock()
		old := s.c.tokens[id]
		s.rmu.RUnlock()
		var obj, prev *unstructured.Unstructured
		var err error
		if tk := t.tokens[id]; tk != nil {
			obj, err = encodeToken(*tk)
		}
		if err == nil && old.rv != "" && !old.bad {
			prev, err = encodeToken(old.t)
		}
		if err != nil {
			undo()
			return err
		}
		a, err := s.write(ctx, tokensGVR, kindToken, id, old.rv, obj, prev)
		if err != nil {
			undo()
			return err
		}
		done = append(done, a)
		tokenRV[id] = a.rv
	}
	nodeRV := map[key.Public]string{}
	for _, k := range slices.SortedFunc(maps.Keys(t.nodes), cmpKey) {
		s.rmu.RLock()
		old := s.c.nodes[k]
		s.rmu.RUnlock()
		var obj, prev *unstructured.Unstructured
		var err error
		if n := t.nodes[k]; n != nil {
			obj, err = encodeNode(*n)
		}
		if err == nil && old.rv != "" && !old.bad {
			prev, err = encodeNode(old.n)
		}
		if err != nil {
			undo()
			return err
		}
		a, err := s.write(ctx, nodesGVR, kindNode, nodeObjectName(k), old.rv, obj, prev)
		if err != nil {
			undo()
			return err
		}
		done = append(done, a)
		nodeRV[k] = a.rv
	}

	// Committed: the claims freed go (a failure leaves an unheld claim
	// for the next writer to clear), and the cache learns it all.
	var freed []string
	for _, c := range free {
		if err := s.unclaim(ctx, c); err != nil {
			s.log.Warn("could not delete a freed claim; the next writer that needs it clears it", "claim", c.name, "err", err)
			continue
		}
		freed = append(freed, c.name)
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for _, c := range create {
		s.c.setClaim(c.name, claimEntry{holder: c.holder, rv: claimed[c.name]})
	}
	for _, name := range freed {
		s.c.dropClaim(name)
	}
	for id, tk := range t.tokens {
		if tk == nil {
			delete(s.c.tokens, id)
			continue
		}
		s.c.tokens[id] = tokenEntry{t: cloneToken(*tk), rv: tokenRV[id]}
	}
	nodes := make(map[key.Public]*nodeEntry, len(t.nodes))
	for k, n := range t.nodes {
		if n != nil {
			nodes[k] = &nodeEntry{n: cloneNode(*n), rv: nodeRV[k]}
		} else {
			nodes[k] = nil
		}
	}
	s.c.setNodes(nodes, s.log)
	return nil
}

func cmpKey(a, b key.Public) int { return slices.Compare(a[:], b[:]) }

type claimWrite struct {
	name   string
	holder key.Public
}

// claimsHeld returns the claims k holds according to the cache.
func (s *Store) claimsHeld(k key.Public) []string {
	s.rmu.RLock()
	defer s.rmu.RUnlock()
	return s.c.held(k)
}

// claim creates a claim for its holder. One that exists for another
// holder is a conflict, unless that holder does not hold it (its node is
// gone or moved on: a writer died before undoing), when it is deleted and
// created again.
func (s *Store) claim(ctx context.Context, c claimWrite) (string, error) {
	obj, err := encodeClaim(c.name, c.holder)
	if err != nil {
		return "", err
	}
	for range 2 {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		got, err := s.cfg.Client.Resource(claimsGVR).Namespace(s.cfg.Namespace).Create(cctx, obj, metav1.CreateOptions{})
		cancel()
		if err == nil {
			return got.GetResourceVersion(), nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return "", s.apiErr("create claim "+c.name, err)
		}
		cur, err := s.get(ctx, claimsGVR, c.name)
		if err != nil {
			return "", err
		}
		if cur == nil {
			continue // deleted meanwhile: try again
		}
		holder, derr := decodeClaim(cur)
		if derr == nil && holder == c.holder {
			return cur.GetResourceVersion(), nil // ours already (a retry after a lost answer)
		}
		held, err := s.holds(ctx, holder, c.name)
		if err != nil {
			return "", err
		}
		if derr == nil && held {
			return "", &conflict{kind: kindClaim, name: c.name, err: fmt.Errorf("held by node %s", holder.Short())}
		}
		s.log.Info("clearing a claim its holder does not hold", "claim", c.name, "holder", holder.Short())
		if err := s.delete(ctx, claimsGVR, c.name, cur.GetResourceVersion()); err != nil && !apierrors.IsNotFound(err) {
			if apierrors.IsConflict(err) {
				return "", &conflict{kind: kindClaim, name: c.name, err: err}
			}
			return "", s.apiErr("delete claim "+c.name, err)
		}
	}
	return "", &conflict{kind: kindClaim, name: c.name, err: errors.New("created and deleted meanwhile")}
}

// handOver rewrites a claim from one holder to another, at the version
// the cache has.
func (s *Store) handOver(ctx context.Context, c claimWrite, from key.Public) (applied, error) {
	obj, err := encodeClaim(c.name, c.holder)
	if err != nil {
		return applied{}, err
	}
	prev, err := encodeClaim(c.name, from)
	if err != nil {
		return applied{}, err
	}
	return s.write(ctx, claimsGVR, kindClaim, c.name, s.c.claims[c.name].rv, obj, prev)
}

// holds reports whether node k's object exists and holds claim name.
func (s *Store) holds(ctx context.Context, k key.Public, name string) (bool, error) {
	u, err := s.get(ctx, nodesGVR, nodeObjectName(k))
	if err != nil || u == nil {
		return false, err
	}
	n, err := decodeNode(u)
	if err != nil {
		return false, nil
	}
	return slices.Contains(claimsOf(&n), name), nil
}

func (s *Store) unclaim(ctx context.Context, c claimWrite) error {
	s.rmu.RLock()
	rv := s.c.claims[c.name].rv
	s.rmu.RUnlock()
	err := s.delete(ctx, claimsGVR, c.name, rv)
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (s *Store) delete(ctx context.Context, gvr schema.GroupVersionResource, name, rv string) error {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	opts := metav1.DeleteOptions{}
	if rv != "" {
		opts.Preconditions = &metav1.Preconditions{ResourceVersion: &rv}
	}
	return s.cfg.Client.Resource(gvr).Namespace(s.cfg.Namespace).Delete(cctx, name, opts)
}

// write creates, replaces (at rv) or deletes (obj nil, at rv) one object.
// rv is "" for an object the cache does not have; prev is the object as
// the cache had it (nil: none, or one that did not decode), for undo.
func (s *Store) write(ctx context.Context, gvr schema.GroupVersionResource, kind, name, rv string, obj, prev *unstructured.Unstructured) (applied, error) {
	a := applied{gvr: gvr, name: name, prev: prev}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	r := s.cfg.Client.Resource(gvr).Namespace(s.cfg.Namespace)
	var got *unstructured.Unstructured
	var err error
	switch {
	case obj == nil:
		err = s.delete(ctx, gvr, name, rv)
	case rv == "":
		got, err = r.Create(cctx, obj, metav1.CreateOptions{})
	default:
		obj.SetResourceVersion(rv)
		got, err = r.Update(cctx, obj, metav1.UpdateOptions{})
	}
	switch {
	case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err):
		return a, &conflict{kind: kind, name: name, err: err}
	case err != nil:
		return a, s.apiErr("write "+gvr.Resource+" "+name, err)
	}
	if got != nil {
		a.rv = got.GetResourceVersion()
	}
	return a, nil
}

// undo reverses one applied write: a created object is deleted, a
// replaced or deleted one put back as it was.
func (s *Store) undo(ctx context.Context, a applied) error {
	r := s.cfg.Client.Resource(a.gvr).Namespace(s.cfg.Namespace)
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	switch {
	case a.prev == nil && a.rv == "":
		return nil // deleted an object that did not decode: nothing to restore
	case a.prev == nil:
		return s.delete(ctx, a.gvr, a.name, a.rv)
	case a.rv == "": // deleted: create it again
		prev := a.prev.DeepCopy()
		prev.SetResourceVersion("")
		prev.SetUID(types.UID(""))
		_, err := r.Create(cctx, prev, metav1.CreateOptions{})
		return err
	default:
		prev := a.prev.DeepCopy()
		prev.SetResourceVersion(a.rv)
		_, err := r.Update(cctx, prev, metav1.UpdateOptions{})
		return err
	}
}

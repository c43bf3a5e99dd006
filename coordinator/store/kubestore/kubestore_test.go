package kubestore_test

import (
	"context"
	"encoding/hex"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/coordinator/store/kubestore"
	"github.com/edgewire/edgewire/coordinator/store/storetest"
	"github.com/edgewire/edgewire/internal/kubetest"
)

// apiServer is one real kube-apiserver and etcd for every test here, with
// the CRDs installed; each test gets its own namespace.
type apiServer struct {
	api *kubetest.API
	dyn dynamic.Interface
}

func start(t *testing.T) *apiServer {
	t.Helper()
	a := &apiServer{api: kubetest.Start(t)}
	_, a.dyn = a.api.Clients(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := kubestore.InstallCRDs(ctx, a.dyn); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *apiServer) namespace(t *testing.T) string { return a.api.Namespace(t) }

func (a *apiServer) open(t *testing.T, ns string) *kubestore.Store {
	t.Helper()
	s, err := kubestore.Open(context.Background(), kubestore.Config{Client: a.dyn, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestKubeStore(t *testing.T) {
	a := start(t)
	t.Run("Contract", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store { return a.open(t, a.namespace(t)) })
	})
	t.Run("TwoWriters", func(t *testing.T) { twoWriters(t, a) })
	t.Run("Reopen", func(t *testing.T) { reopen(t, a) })
	t.Run("HandEdits", func(t *testing.T) { handEdits(t, a) })
	t.Run("UnheldClaim", func(t *testing.T) { unheldClaim(t, a) })
	t.Run("Unreachable", func(t *testing.T) { unreachable(t, a) })
}

// unreachable: with the API server out of reach, reads go on from the
// cache, writes fail with ErrUnavailable and leave nothing behind, and
// writes work again once it is back.
func unreachable(t *testing.T, a *apiServer) {
	ns := a.namespace(t)
	ctx := context.Background()
	cut := &kubetest.Cut{}
	_, dyn := a.api.Clients(t, cut.Wrap)
	s, err := kubestore.Open(ctx, kubestore.Config{Client: dyn, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	alpha := storetest.TestNode(1, "alpha")
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.PutNode(alpha) }); err != nil {
		t.Fatal(err)
	}
	cut.Set(true)
	bravo := storetest.TestNode(2, "bravo")
	err = s.Update(ctx, func(tx store.Tx) error { return tx.PutNode(bravo) })
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("write while cut off: got %v, want ErrUnavailable", err)
	}
	if err := s.View(ctx, func(tx store.Tx) error {
		_, err := tx.Node(alpha.Key)
		return err
	}); err != nil {
		t.Errorf("read while cut off: %v", err)
	}
	cut.Set(false)
	checkClaims(t, a, ns, []store.Node{alpha})
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.PutNode(bravo) }); err != nil {
		t.Errorf("write after the API server is back: %v", err)
	}
	checkClaims(t, a, ns, []store.Node{alpha, bravo})
}

// twoWriters: two stores on one namespace (two coordinator replicas),
// each with its own cache, race for one token's uses: neither overspends
// it, as a third store reading the API server afresh shows.
func twoWriters(t *testing.T, a *apiServer) {
	ns := a.namespace(t)
	nodes := storetest.RaceTokenUses(t, []store.Store{a.open(t, ns), a.open(t, ns)}, func() store.Store { return a.open(t, ns) }, false)
	checkClaims(t, a, ns, nodes)
}

// checkClaims asserts that the namespace holds exactly the claims of nodes.
func checkClaims(t *testing.T, a *apiServer, ns string, nodes []store.Node) {
	t.Helper()
	l, err := a.dyn.Resource(claimsGVR).Namespace(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for _, u := range l.Items {
		got = append(got, u.GetName())
	}
	for _, n := range nodes {
		want = append(want, "name."+n.Name)
		for _, addr := range n.Addresses {
			name := addr.String()
			if addr.Is6() {
				name = strings.ReplaceAll(addr.StringExpanded(), ":", "-")
			}
			want = append(want, "addr."+name)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("claims: got %v, want %v", got, want)
	}
}

var (
	nodesGVR  = schema.GroupVersionResource{Group: "edgewire.io", Version: "v1alpha1", Resource: "edgewirenodes"}
	tokensGVR = schema.GroupVersionResource{Group: "edgewire.io", Version: "v1alpha1", Resource: "edgewiretokens"}
	claimsGVR = schema.GroupVersionResource{Group: "edgewire.io", Version: "v1alpha1", Resource: "edgewireclaims"}
)

// reopen: a new store on the namespace reads back what another wrote,
// and a node rename and a delete leave only the claims still held.
func reopen(t *testing.T, a *apiServer) {
	ns := a.namespace(t)
	s1 := a.open(t, ns)
	ctx := context.Background()
	n1, n2 := storetest.TestNode(1, "alpha"), storetest.TestNode(2, "bravo")
	if err := s1.Update(ctx, func(tx store.Tx) error {
		if err := tx.PutToken(store.Token{ID: "0a1b2c3d", SecretHash: [32]byte{9}, MaxUses: 2, Uses: 1}); err != nil {
			return err
		}
		if err := tx.PutNode(n1); err != nil {
			return err
		}
		return tx.PutNode(n2)
	}); err != nil {
		t.Fatal(err)
	}
	n1.Name = "renamed"
	n1.Addresses = n1.Addresses[:1]
	if err := s1.Update(ctx, func(tx store.Tx) error {
		if err := tx.PutNode(n1); err != nil {
			return err
		}
		return tx.DeleteNode(n2.Key)
	}); err != nil {
		t.Fatal(err)
	}
	s2 := a.open(t, ns)
	var nodes []store.Node
	if err := s2.View(ctx, func(tx store.Tx) error {
		var err error
		nodes, err = tx.Nodes()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].Name != "renamed" || !slices.Equal(nodes[0].Addresses, n1.Addresses) {
		t.Errorf("after rename and delete, read back %+v, want only %+v", nodes, n1)
	}
	checkClaims(t, a, ns, nodes)
}

// handEdits: objects edited by hand into nonsense are reported, counted
// and ignored; the good ones load, and a write replaces a bad one.
func handEdits(t *testing.T, a *apiServer) {
	ns := a.namespace(t)
	ctx := context.Background()
	s1 := a.open(t, ns)
	good, dup := storetest.TestNode(1, "alpha"), storetest.TestNode(2, "bravo")
	if err := s1.Update(ctx, func(tx store.Tx) error {
		if err := tx.PutNode(good); err != nil {
			return err
		}
		return tx.PutNode(dup)
	}); err != nil {
		t.Fatal(err)
	}
	nodes := a.dyn.Resource(nodesGVR).Namespace(ns)
	edit := func(name string, fn func(spec map[string]any)) {
		t.Helper()
		u, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		spec := u.Object["spec"].(map[string]any)
		fn(spec)
		if _, err := nodes.Update(ctx, u, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("hand edit of %s: %v", name, err)
		}
	}
	hexKey := func(b byte) string { k := storetest.NodeKey(b); return hex.EncodeToString(k[:]) }
	// bravo edited onto alpha's address (the claims do not change).
	edit(hexKey(2), func(spec map[string]any) { spec["addresses"] = []any{good.Addresses[0].String()} })
	// A node object with a key that is not its name's, and one with a
	// garbage address, created by hand.
	for i, spec := range []map[string]any{
		{"publicKey": storetest.NodeKey(4).String(), "name": "charlie"},
		{"publicKey": storetest.NodeKey(5).String(), "name": "delta", "addresses": []any{"100.64.0.300"}},
	} {
		u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
		u.SetAPIVersion("edgewire.io/v1alpha1")
		u.SetKind("EdgewireNode")
		u.SetName(hexKey(byte(3 + 2*i)))
		if i == 1 {
			u.SetName(hexKey(5))
		}
		if _, err := nodes.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create hand-made node %d: %v", i, err)
		}
	}
	// The schema refuses some nonsense outright.
	if _, err := nodes.Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "edgewire.io/v1alpha1", "kind": "EdgewireNode",
		"metadata": map[string]any{"name": hexKey(6)}, "spec": map[string]any{"publicKey": "not a key", "name": "Echo"},
	}}, metav1.CreateOptions{}); err == nil {
		t.Error("the API server took a node with a malformed key and name; the CRD schema should refuse it")
	}
	// A token with a malformed hash slips past nothing: the schema
	// refuses it too.
	if _, err := a.dyn.Resource(tokensGVR).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "edgewire.io/v1alpha1", "kind": "EdgewireToken",
		"metadata": map[string]any{"name": "bbbbbbbb"}, "spec": map[string]any{"secretHash": "xyz"},
	}}, metav1.CreateOptions{}); err == nil {
		t.Error("the API server took a token with a malformed hash")
	}

	s2 := a.open(t, ns)
	var got []string
	if err := s2.View(ctx, func(tx store.Tx) error {
		ns, err := tx.Nodes()
		for _, n := range ns {
			got = append(got, n.Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"alpha"}) {
		t.Errorf("nodes loaded: got %v, want [alpha] (bravo shares its address, charlie's key is not its name's, delta's address is garbage)", got)
	}
	if r := s2.Rejected(); r != 2 {
		t.Errorf("rejected objects: got %d, want 2 (charlie, delta)", r)
	}
	// Writing delta for real replaces the nonsense.
	delta := storetest.TestNode(5, "delta")
	if err := s2.Update(ctx, func(tx store.Tx) error { return tx.PutNode(delta) }); err != nil {
		t.Fatalf("put over a bad object: %v", err)
	}
	if err := a.open(t, ns).View(ctx, func(tx store.Tx) error {
		n, err := tx.Node(delta.Key)
		if err != nil || n.Name != "delta" {
			t.Errorf("delta after the write: %+v, %v", n, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// unheldClaim: a claim left by a writer that died between its steps (no
// node holds it) does not block the next writer that needs it.
func unheldClaim(t *testing.T, a *apiServer) {
	ns := a.namespace(t)
	ctx := context.Background()
	s := a.open(t, ns)
	addr := storetest.Addr4(7)
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "edgewire.io/v1alpha1", "kind": "EdgewireClaim",
		"metadata": map[string]any{"name": "addr." + addr.String()},
		"spec":     map[string]any{"node": strings.Repeat("09", 32)},
	}}
	if _, err := a.dyn.Resource(claimsGVR).Namespace(ns).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := store.Node{Key: storetest.NodeKey(1), Name: "alpha", Addresses: []netip.Addr{addr}}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.PutNode(n) }); err != nil {
		t.Fatalf("put node on an unheld claim's address: %v", err)
	}
	checkClaims(t, a, ns, []store.Node{n})
}

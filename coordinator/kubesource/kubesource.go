// Package kubesource feeds the coordinator's Service map from Kubernetes:
// shared informers on Services, EndpointSlices and Nodes (one watch in the
// cloud instead of one per edge node). It is the only package that
// imports client-go; the core sees it as a svcsource.Source.
package kubesource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/edgewire/edgewire/coordinator/svcsource"
	"github.com/edgewire/edgewire/types/services"
)

// Config configures a Source.
type Config struct {
	// Kubeconfig is a kubeconfig path; empty means in-cluster config.
	Kubeconfig string
	Resync     time.Duration // informer resync (default 10m)
	// AgentServiceAccount is "namespace/name" of the service account the
	// agent DaemonSet runs as: VerifyNode accepts only its tokens.
	// Empty: VerifyNode refuses every token.
	AgentServiceAccount string
	Logger              *slog.Logger
}

// Source watches a Kubernetes API server.
type Source struct {
	cfg    Config
	log    *slog.Logger
	client kubernetes.Interface
}

var _ svcsource.Source = (*Source)(nil)

// RESTConfig reads a kubeconfig, or the in-cluster configuration when
// the path is empty.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes config: %w", err)
	}
	rc.UserAgent = "edgewire-coordinator"
	return rc, nil
}

// New connects to the API server described by cfg.
func New(cfg Config) (*Source, error) {
	rc, err := RESTConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return newSource(cfg, c)
}

// newSource validates cfg, fills in its defaults and returns a Source on c.
func newSource(cfg Config, c kubernetes.Interface) (*Source, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 10 * time.Minute
	}
	if sa := cfg.AgentServiceAccount; sa != "" {
		ns, name, ok := strings.Cut(sa, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("agent service account %q: want namespace/name", sa)
		}
	}
	return &Source{cfg: cfg, log: cfg.Logger, client: c}, nil
}

// Audience is the audience agents request their service account tokens
// for; a token for any other audience (the API server's own, say) is
// refused.
const Audience = "edgewire"

// Extra keys the API server sets on pod-bound service account tokens.
const (
	extraNodeName = "authentication.kubernetes.io/node-name"
	extraPodName  = "authentication.kubernetes.io/pod-name"
)

// VerifyNode asks the API server (TokenReview) whether token is a valid
// token of the agent's service account for Audience, bound to a pod that
// still exists, and returns the name of the Node that pod runs on. The
// API server checks the signature, expiry and that the bound pod (and so
// its node binding) is current.
func (s *Source) VerifyNode(ctx context.Context, token string) (string, error) {
	if s.cfg.AgentServiceAccount == "" {
		return "", errors.New("the coordinator has no --agent-service-account configured")
	}
	tr, err := s.client.AuthenticationV1().TokenReviews().Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: token, Audiences: []string{Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		if st.Error != "" {
			return "", fmt.Errorf("not authenticated: %s", st.Error)
		}
		return "", errors.New("not authenticated")
	}
	if !slices.Contains(st.Audiences, Audience) {
		return "", fmt.Errorf("token is not for audience %q", Audience)
	}
	ns, name, _ := strings.Cut(s.cfg.AgentServiceAccount, "/")
	if want := "system:serviceaccount:" + ns + ":" + name; st.User.Username != want {
		return "", fmt.Errorf("token is %s's, not the agent's (%s)", st.User.Username, want)
	}
	nodes, pods := st.User.Extra[extraNodeName], st.User.Extra[extraPodName]
	if len(pods) != 1 || len(nodes) != 1 || nodes[0] == "" {
		return "", errors.New("token is not bound to a pod on a node (the agent must use a projected service account token)")
	}
	return nodes[0], nil
}

// Run implements svcsource.Source.
func (s *Source) Run(ctx context.Context, sink svcsource.Sink) error {
	f := informers.NewSharedInformerFactory(s.client, s.cfg.Resync)
	svcInf := f.Core().V1().Services()
	epsInf := f.Discovery().V1().EndpointSlices()
	nodeInf := f.Core().V1().Nodes()

	// Changes are keyed by Service and rebuilt by one goroutine from the
	// listers, so a Service and its slices are always read together.
	dirty := make(chan struct{}, 1)
	var mu sync.Mutex // guards pending
	pending := map[string]bool{}
	mark := func(key string) {
		mu.Lock()
		pending[key] = true
		mu.Unlock()
		select {
		case dirty <- struct{}{}:
		default:
		}
	}
	svcKey := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		switch o := obj.(type) {
		case *corev1.Service:
			mark(o.Namespace + "/" + o.Name)
		case *discoveryv1.EndpointSlice:
			if name := o.Labels[discoveryv1.LabelServiceName]; name != "" {
				mark(o.Namespace + "/" + name)
			}
		}
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    svcKey,
		UpdateFunc: func(_, n any) { svcKey(n) },
		DeleteFunc: svcKey,
	}
	// The handlers' registrations sync once every object of the initial
	// lists has been delivered to them, not only listed.
	var handled []cache.InformerSynced
	for _, inf := range []cache.SharedIndexInformer{svcInf.Informer(), epsInf.Informer()} {
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return err
		}
		handled = append(handled, reg.HasSynced)
	}
	nodeHandler := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		n, ok := obj.(*corev1.Node)
		if !ok {
			return
		}
		if err := sink.SetKubeNode(n.Name, s.podCIDRs(n)); err != nil {
			s.log.Error("refusing pod CIDRs", "err", err)
		}
	}
	// A Node whose addresses change may turn its endpoints into
	// hostNetwork ones or back: every Service is looked at again (rare).
	var synced atomic.Bool
	remarkAll := func() {
		if !synced.Load() {
			return // the initial list marks every Service anyway
		}
		all, err := svcInf.Lister().List(labels.Everything())
		if err != nil {
			return
		}
		for _, svc := range all {
			mark(svc.Namespace + "/" + svc.Name)
		}
	}
	nodeReg, err := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { nodeHandler(obj); remarkAll() },
		UpdateFunc: func(o, n any) {
			nodeHandler(n)
			on, ok1 := o.(*corev1.Node)
			nn, ok2 := n.(*corev1.Node)
			if ok1 && ok2 && !slices.Equal(nodeAddrs(on), nodeAddrs(nn)) {
				remarkAll()
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				sink.DeleteKubeNode(n.Name)
				remarkAll()
			}
		},
	})
	if err != nil {
		return err
	}
	handled = append(handled, nodeReg.HasSynced)
	f.Start(ctx.Done())
	defer f.Shutdown()
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("kubernetes: %v cache did not sync", typ)
		}
	}
	if !cache.WaitForCacheSync(ctx.Done(), handled...) {
		return fmt.Errorf("kubernetes: event handlers did not sync")
	}
	synced.Store(true)
	s.log.Info("kubernetes watcher synced")
	first := true
	for {
		if !first { // the initial list marked every Service: sync those at once
			select {
			case <-ctx.Done():
				return nil
			case <-dirty:
			}
		}
		mu.Lock()
		keys := pending
		pending = map[string]bool{}
		mu.Unlock()
		hostAddr := func(node string, a netip.Addr) bool {
			n, err := nodeInf.Lister().Get(node)
			return err == nil && slices.Contains(nodeAddrs(n), a)
		}
		for key := range keys {
			s.sync(key, svcInf.Lister(), epsInf.Lister(), hostAddr, sink)
		}
		if first {
			first = false
			sink.Synced()
		}
	}
}

func (s *Source) podCIDRs(n *corev1.Node) []netip.Prefix {
	var out []netip.Prefix
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil || p != p.Masked() {
			s.log.Warn("ignoring invalid pod CIDR", "node", n.Name, "cidr", c)
			continue
		}
		out = append(out, p)
	}
	return out
}

// sync rebuilds one Service from the listers, validates it and hands it
// to the sink; an invalid one is logged and withdrawn, never half-shipped.
func (s *Source) sync(key string, svcs corelisters.ServiceLister, slices discoverylisters.EndpointSliceLister, hostAddr func(string, netip.Addr) bool, sink svcsource.Sink) {
	ns, name, _ := services.SplitKey(key)
	svc, err := svcs.Services(ns).Get(name)
	if err != nil {
		sink.DeleteService(key)
		return
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		sink.DeleteService(key)
		return
	}
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name})
	list, err := slices.EndpointSlices(ns).List(sel)
	if err != nil {
		s.log.Warn("list endpoint slices", "service", key, "err", err)
		return
	}
	out, err := Convert(svc, list, hostAddr)
	if err == nil {
		err = out.Validate()
	}
	if err != nil {
		s.log.Warn("refusing invalid Service", "service", key, "err", err)
		sink.DeleteService(key)
		return
	}
	sink.SetService(out)
}

// nodeAddrs is a Node's own addresses (InternalIP, ExternalIP), sorted.
func nodeAddrs(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, na := range n.Status.Addresses {
		if na.Type != corev1.NodeInternalIP && na.Type != corev1.NodeExternalIP {
			continue
		}
		if a, err := netip.ParseAddr(na.Address); err == nil && !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Convert builds the Service the map carries from a Kubernetes Service
// and its EndpointSlices: ready endpoints only, each address once per
// node (every site's default bridge may hand out the same address), in
// address and node order so that an unchanged Service converts to an
// equal one (the lister returns slices in no particular order). An
// endpoint whose address is one of its node's own (hostAddr, which may be
// nil) is marked HostNetwork. It refuses what does not fit the domain
// types (addresses that do not parse, ports out of range); the caller
// validates the rest.
func Convert(svc *corev1.Service, slices []*discoveryv1.EndpointSlice, hostAddr func(node string, a netip.Addr) bool) (*services.Service, error) {
	out := &services.Service{Namespace: svc.Namespace, Name: svc.Name}
	for _, ip := range svc.Spec.ClusterIPs {
		if ip == "" || ip == corev1.ClusterIPNone {
			continue
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("service %s: cluster IP %q: %w", out.Key(), ip, err)
		}
		out.ClusterIPs = append(out.ClusterIPs, a)
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Port <= 0 || sp.Port > 65535 {
			return nil, fmt.Errorf("service %s port %q: %d out of range", out.Key(), sp.Name, sp.Port)
		}
		out.Ports = append(out.Ports, services.Port{Name: sp.Name, Protocol: services.Protocol(sp.Protocol), Port: uint16(sp.Port)})
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		out.ClientIPAffinity = true
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			secs := *c.ClientIP.TimeoutSeconds
			if secs < 0 || secs > maxAffinityTimeout {
				return nil, fmt.Errorf("service %s: affinity timeout %ds out of range (0-%d)", out.Key(), secs, maxAffinityTimeout)
			}
			out.AffinityTimeout = time.Duration(secs) * time.Second
		}
	}
	type seenKey struct {
		addr netip.Addr
		node string
	}
	seen := map[seenKey]bool{}
	for _, sl := range slices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports := map[string]uint16{}
		for _, pt := range sl.Ports {
			if pt.Port == nil {
				continue
			}
			n := ""
			if pt.Name != nil {
				n = *pt.Name
			}
			if *pt.Port <= 0 || *pt.Port > 65535 {
				return nil, fmt.Errorf("service %s endpoint port %q: %d out of range", out.Key(), n, *pt.Port)
			}
			ports[n] = uint16(*pt.Port)
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			e := services.Endpoint{Ports: ports}
			for _, a := range ep.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil {
					return nil, fmt.Errorf("service %s endpoint %q: %w", out.Key(), a, err)
				}
				e.Addresses = append(e.Addresses, addr)
			}
			if len(e.Addresses) == 0 {
				continue
			}
			if ep.NodeName != nil {
				e.NodeName = *ep.NodeName
			}
			if k := (seenKey{e.Addresses[0], e.NodeName}); seen[k] {
				continue
			} else {
				seen[k] = true
			}
			if ep.Hostname != nil {
				e.Hostname = *ep.Hostname
			}
			e.HostNetwork = e.NodeName != "" && hostAddr != nil && hostAddr(e.NodeName, e.Addresses[0].Unmap())
			out.Endpoints = append(out.Endpoints, e)
		}
	}
	sort.Slice(out.Endpoints, func(i, j int) bool { return out.Endpoints[i].Less(&out.Endpoints[j]) })
	return out, nil
}

// maxAffinityTimeout is the longest ClientIP affinity Kubernetes allows.
const maxAffinityTimeout = 86400 // seconds

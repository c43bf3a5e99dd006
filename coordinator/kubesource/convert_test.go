package kubesource

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgewire/edgewire/types/services"
)

func ptr[T any](v T) *T { return &v }

func kubeService(mod func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web"},
		Spec: corev1.ServiceSpec{
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
		},
	}
	if mod != nil {
		mod(s)
	}
	return s
}

func slice(typ discoveryv1.AddressType, port int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "demo", Name: "web-" + string(typ), Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: typ,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(port)}},
		Endpoints:   eps,
	}
}

func endpoint(ready bool, node string, addrs ...string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: addrs, NodeName: ptr(node), Conditions: discoveryv1.EndpointConditions{Ready: ptr(ready)}}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestConvert(t *testing.T) {
	http := map[string]uint16{"http": 8080}
	tests := []struct {
		name    string
		svc     *corev1.Service
		slices  []*discoveryv1.EndpointSlice
		host    func(node string, a netip.Addr) bool
		want    *services.Service
		refused string // in Convert's error; "": converts
	}{
		{
			name: "ready endpoints only, each address once, in address order",
			svc:  kubeService(nil),
			slices: []*discoveryv1.EndpointSlice{
				slice(discoveryv1.AddressTypeIPv4, 8080,
					endpoint(true, "edge-2", "10.244.2.5"),
					endpoint(false, "edge-3", "10.244.3.5"),
					endpoint(true, "edge-1", "10.244.1.5")),
				slice(discoveryv1.AddressTypeFQDN, 8080, endpoint(true, "edge-4", "db.example.com")),
				slice(discoveryv1.AddressTypeIPv4, 8080, endpoint(true, "edge-2", "10.244.2.5")),
			},
			want: &services.Service{Namespace: "demo", Name: "web", ClusterIPs: addrs("10.96.0.10"),
				Ports: []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}},
				Endpoints: []services.Endpoint{
					{Addresses: addrs("10.244.1.5"), NodeName: "edge-1", Ports: http},
					{Addresses: addrs("10.244.2.5"), NodeName: "edge-2", Ports: http},
				}},
		},
		{
			// Every site's default bridge hands out 172.17.0.2, and every
			// site's LAN may number its host 192.168.1.10: one endpoint per
			// node, never one for all.
			name: "the same address on two nodes is two endpoints; a node's own address is hostNetwork",
			svc:  kubeService(nil),
			slices: []*discoveryv1.EndpointSlice{
				slice(discoveryv1.AddressTypeIPv4, 8080,
					endpoint(true, "edge-2", "172.17.0.2"),
					endpoint(true, "edge-1", "172.17.0.2"),
					endpoint(true, "edge-2", "192.168.1.10"),
					endpoint(true, "edge-1", "192.168.1.10"),
					endpoint(true, "edge-1", "172.17.0.2")),
			},
			host: func(node string, a netip.Addr) bool {
				return a == netip.MustParseAddr("192.168.1.10") && node == "edge-2"
			},
			want: &services.Service{Namespace: "demo", Name: "web", ClusterIPs: addrs("10.96.0.10"),
				Ports: []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}},
				Endpoints: []services.Endpoint{
					{Addresses: addrs("172.17.0.2"), NodeName: "edge-1", Ports: http},
					{Addresses: addrs("172.17.0.2"), NodeName: "edge-2", Ports: http},
					{Addresses: addrs("192.168.1.10"), NodeName: "edge-1", Ports: http},
					{Addresses: addrs("192.168.1.10"), NodeName: "edge-2", Ports: http, HostNetwork: true},
				}},
		},
		{
			name: "headless with ClientIP affinity",
			svc: kubeService(func(s *corev1.Service) {
				s.Spec.ClusterIPs = []string{corev1.ClusterIPNone}
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr(int32(600))}}
			}),
			want: &services.Service{Namespace: "demo", Name: "web", ClientIPAffinity: true, AffinityTimeout: 10 * time.Minute,
				Ports: []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}}},
		},
		{
			name:    "bad cluster IP",
			svc:     kubeService(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0"} }),
			refused: "cluster IP",
		},
		{
			name:    "bad endpoint address",
			svc:     kubeService(nil),
			slices:  []*discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, 8080, endpoint(true, "edge-1", "10.244.1"))},
			refused: "endpoint",
		},
		{
			name:    "endpoint port out of range",
			svc:     kubeService(nil),
			slices:  []*discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, 70000, endpoint(true, "edge-1", "10.244.1.5"))},
			refused: "out of range",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Convert(tt.svc, tt.slices, tt.host)
			if tt.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tt.refused) {
					t.Fatalf("got %v, want an error saying %q", err, tt.refused)
				}
				return
			}
			if err != nil {
				t.Fatalf("got %v, want no error", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("converted Service does not validate: %v", err)
			}
		})
	}
}

// Slices listed in another order convert to an equal Service, so the
// registry sees no change.
func TestConvertStable(t *testing.T) {
	a := slice(discoveryv1.AddressTypeIPv4, 8080, endpoint(true, "edge-2", "10.244.2.5"))
	b := slice(discoveryv1.AddressTypeIPv6, 8080, endpoint(true, "edge-1", "fd00::5"))
	b.Name = "web-2"
	c := slice(discoveryv1.AddressTypeIPv4, 8080, endpoint(true, "edge-1", "10.244.1.5"))
	c.Name = "web-3"
	one, err := Convert(kubeService(nil), []*discoveryv1.EndpointSlice{a, b, c}, nil)
	if err != nil {
		t.Fatal(err)
	}
	two, err := Convert(kubeService(nil), []*discoveryv1.EndpointSlice{c, b, a}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(one, two) {
		t.Errorf("order of slices changed the Service:\n%+v\n%+v", one, two)
	}
}

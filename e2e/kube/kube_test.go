package kube_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/edgewire/edgewire/e2e/kube"
)

const ns = "edgewire-test"

// TestCluster proves the API server is real and serves what the Kubernetes
// backend and the Helm chart checks need: core and discovery objects that
// round-trip, allocated ClusterIPs, token auth, and server-side dry-run that
// validates without persisting.
func TestCluster(t *testing.T) {
	c := kube.Start(t, t.TempDir(), nil)
	hc := c.HTTPClient()

	kc, err := os.ReadFile(c.Kubeconfig)
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	for _, want := range []string{c.URL, c.Token, c.CAFile} {
		if !strings.Contains(string(kc), want) {
			t.Errorf("kubeconfig lacks %q:\n%s", want, kc)
		}
	}
	var version struct{ GitVersion string }
	call(t, hc, c.URL, "GET", "/version", nil, http.StatusOK, &version)
	if !strings.HasPrefix(version.GitVersion, "v1.") {
		t.Errorf("gitVersion = %q, want v1.x (set by hack/kube/build.sh)", version.GitVersion)
	}

	t.Run("auth", func(t *testing.T) {
		// A client that trusts CAFile and sends no token of its own.
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			t.Fatalf("no certificate in %s", c.CAFile)
		}
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		defer tr.CloseIdleConnections()
		caOnly := &http.Client{Transport: tr}
		for _, tc := range []struct {
			name  string
			token string
			want  int
		}{
			{"admin token", c.Token, http.StatusOK},
			{"wrong token", "not-" + c.Token, http.StatusUnauthorized},
			{"anonymous", "", http.StatusForbidden},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req, err := http.NewRequest("GET", c.URL+"/api/v1/namespaces", nil)
				if err != nil {
					t.Fatal(err)
				}
				if tc.token != "" {
					req.Header.Set("Authorization", "Bearer "+tc.token)
				}
				resp, err := caOnly.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Errorf("got %s, want %d", resp.Status, tc.want)
				}
			})
		}
	})

	// Objects are created in order: the namespace first.
	call(t, hc, c.URL, "POST", "/api/v1/namespaces", obj(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"`+ns+`"}}`), http.StatusCreated, nil)
	call(t, hc, c.URL, "POST", "/api/v1/namespaces/"+ns+"/services", obj(`{
		"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},
		"spec":{"type":"ClusterIP","selector":{"app":"web"},
			"ports":[{"name":"http","port":80,"targetPort":8080,"protocol":"TCP"}]}}`), http.StatusCreated, nil)
	call(t, hc, c.URL, "POST", "/apis/discovery.k8s.io/v1/namespaces/"+ns+"/endpointslices", obj(`{
		"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
		"metadata":{"name":"web-1","labels":{"kubernetes.io/service-name":"web"}},
		"addressType":"IPv4",
		"endpoints":[{"addresses":["10.244.1.5"],"conditions":{"ready":true},"nodeName":"edge-1"}],
		"ports":[{"name":"http","port":8080,"protocol":"TCP"}]}`), http.StatusCreated, nil)

	t.Run("read back", func(t *testing.T) {
		var n struct {
			Status struct{ Phase string }
		}
		call(t, hc, c.URL, "GET", "/api/v1/namespaces/"+ns, nil, http.StatusOK, &n)
		if n.Status.Phase != "Active" {
			t.Errorf("namespace phase = %q, want Active", n.Status.Phase)
		}

		var svc struct {
			Spec struct {
				ClusterIP string
				Ports     []struct{ Port int }
			}
		}
		call(t, hc, c.URL, "GET", "/api/v1/namespaces/"+ns+"/services/web", nil, http.StatusOK, &svc)
		ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil || !netip.MustParsePrefix(kube.ServiceCIDR).Contains(ip) {
			t.Errorf("clusterIP = %q, want an address in %s", svc.Spec.ClusterIP, kube.ServiceCIDR)
		}
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 80 {
			t.Errorf("service ports = %+v, want one port 80", svc.Spec.Ports)
		}

		var eps struct {
			Metadata  struct{ Labels map[string]string }
			Endpoints []struct {
				Addresses []string
				NodeName  string
			}
			Ports []struct{ Port int }
		}
		call(t, hc, c.URL, "GET", "/apis/discovery.k8s.io/v1/namespaces/"+ns+"/endpointslices/web-1", nil, http.StatusOK, &eps)
		if got := eps.Metadata.Labels["kubernetes.io/service-name"]; got != "web" {
			t.Errorf("service-name label = %q, want web", got)
		}
		if len(eps.Endpoints) != 1 || len(eps.Endpoints[0].Addresses) != 1 ||
			eps.Endpoints[0].Addresses[0] != "10.244.1.5" || eps.Endpoints[0].NodeName != "edge-1" {
			t.Errorf("endpoints = %+v, want 10.244.1.5 on edge-1", eps.Endpoints)
		}
		if len(eps.Ports) != 1 || eps.Ports[0].Port != 8080 {
			t.Errorf("endpoint ports = %+v, want one port 8080", eps.Ports)
		}
	})

	t.Run("dry-run", func(t *testing.T) {
		const deployment = `{
			"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"%s"},
			"spec":{"replicas":1,"selector":{"matchLabels":{"app":"web"}},
				"template":{"metadata":{"labels":{"app":"%s"}},
					"spec":{"containers":[{"name":"web","image":"registry.invalid/web:1"}]}}}}`
		for _, tc := range []struct {
			name, labels string
			want         int
		}{
			{"valid", "web", http.StatusCreated},
			// The selector does not match the template's labels.
			{"invalid", "other", http.StatusUnprocessableEntity},
		} {
			t.Run(tc.name, func(t *testing.T) {
				body := obj(fmt.Sprintf(deployment, tc.name, tc.labels))
				var status struct{ Reason string }
				call(t, hc, c.URL, "POST", "/apis/apps/v1/namespaces/"+ns+"/deployments?dryRun=All", body, tc.want, &status)
				if tc.want == http.StatusUnprocessableEntity && status.Reason != "Invalid" {
					t.Errorf("reason = %q, want Invalid", status.Reason)
				}
				// Dry-run must not persist.
				call(t, hc, c.URL, "GET", "/apis/apps/v1/namespaces/"+ns+"/deployments/"+tc.name, nil, http.StatusNotFound, nil)
			})
		}
	})
}

// call sends body (JSON, may be nil) and wants status; when out is non-nil
// the response is decoded into it.
func call(t *testing.T, hc *http.Client, base, method, path string, body []byte, want int, out any) {
	t.Helper()
	req, err := http.NewRequest(method, base+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	if resp.StatusCode != want {
		t.Fatalf("%s %s: got %s, want %d: %s", method, path, resp.Status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

func obj(s string) []byte { return []byte(s) }

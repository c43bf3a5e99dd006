package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/edgewire/edgewire/e2e/kube"
)

// apiClient sends requests to a test kube-apiserver and resolves kinds to
// collection paths through discovery.
type apiClient struct {
	t         *testing.T
	base      string
	http      *http.Client
	discovery map[string][]resource // group/version -> resources
}

type resource struct {
	Name       string `json:"name"`
	Kind       string `json:"kind"`
	Namespaced bool   `json:"namespaced"`
}

// do sends body (nil: none) and returns the status code and response body.
func (c *apiClient) do(method, path string, body []byte) (int, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b
}

// collection returns the path objects of o's kind are POSTed to.
func (c *apiClient) collection(o object) (string, error) {
	gv := o.str("apiVersion")
	if _, ok := c.discovery[gv]; !ok {
		prefix := "/apis/" + gv
		if gv == "v1" {
			prefix = "/api/v1"
		}
		code, body := c.do(http.MethodGet, prefix, nil)
		if code != http.StatusOK {
			return "", fmt.Errorf("discovery %s: HTTP %d: %s", prefix, code, body)
		}
		var list struct {
			Resources []resource `json:"resources"`
		}
		if err := json.Unmarshal(body, &list); err != nil {
			return "", fmt.Errorf("discovery %s: %w", prefix, err)
		}
		c.discovery[gv] = list.Resources
	}
	for _, r := range c.discovery[gv] {
		if r.Kind != o.kind() || strings.Contains(r.Name, "/") {
			continue // a subresource such as deployments/status
		}
		prefix := "/apis/" + gv
		if gv == "v1" {
			prefix = "/api/v1"
		}
		if r.Namespaced {
			return prefix + "/namespaces/" + url.PathEscape(o.str("metadata", "namespace")) + "/" + r.Name, nil
		}
		return prefix + "/" + r.Name, nil
	}
	return "", fmt.Errorf("the API server serves no kind %s in %s", o.kind(), gv)
}

// dryRun POSTs o to its collection with server-side dry-run: the API
// server decodes, defaults, validates and admits it but stores nothing.
func (c *apiClient) dryRun(o object) (int, []byte, error) {
	c.t.Helper()
	path, err := c.collection(o)
	if err != nil {
		return 0, nil, err
	}
	body, err := json.Marshal(o)
	if err != nil {
		return 0, nil, err
	}
	code, resp := c.do(http.MethodPost, path+"?dryRun=All&fieldValidation=Strict", body)
	return code, resp, nil
}

// TestChartServerDryRun sends every object the chart renders, with default
// and edited values, to a real kube-apiserver with server-side dry-run
// (after creating the namespace for real) and requires each to be accepted.
// Strict field validation turns unknown or duplicate fields into errors.
func TestChartServerDryRun(t *testing.T) {
	h := tools(t)
	cluster := kube.Start(t, t.TempDir(), nil) // fails under CI=true, skips elsewhere, if the binaries cannot be built
	c := &apiClient{t: t, base: cluster.URL, http: cluster.HTTPClient(), discovery: map[string][]resource{}}

	ns := h.objects(t, []byte(readDeploy(t, "kubernetes/00-namespace.yaml")))
	if len(ns) != 1 {
		t.Fatalf("00-namespace.yaml: got %d objects, want 1", len(ns))
	}
	body, err := json.Marshal(ns[0])
	if err != nil {
		t.Fatal(err)
	}
	if code, resp := c.do(http.MethodPost, "/api/v1/namespaces?fieldValidation=Strict", body); code != http.StatusCreated {
		t.Fatalf("create namespace %s: HTTP %d: %s", namespace, code, resp)
	}

	for name, values := range map[string]map[string]any{"defaults": nil, "edited": editedValues(), "replicated": replicatedValues(), "monitored": monitoredValues("serviceMonitor")} {
		t.Run(name, func(t *testing.T) {
			objs := h.render(t, values)
			var accepted []string
			for _, o := range objs {
				if strings.HasPrefix(o.str("apiVersion"), "monitoring.coreos.com/") {
					// The test API server has no Prometheus Operator CRDs;
					// TestChartMonitoring checks these objects.
					t.Logf("not sent: %s (%s)", o, o.str("apiVersion"))
					continue
				}
				code, resp, err := c.dryRun(o)
				if err != nil {
					t.Errorf("%s: %v", o, err)
					continue
				}
				if code/100 != 2 {
					t.Errorf("dry-run create %s: HTTP %d: %s", o, code, resp)
					continue
				}
				accepted = append(accepted, o.String())
			}
			t.Logf("accepted %d of %d objects: %s", len(accepted), len(objs), strings.Join(accepted, ", "))
		})
	}

	// The check must be able to fail: the API server has to refuse a
	// DaemonSet with a hostPath type it does not know and an unknown field.
	t.Run("refuses broken objects", func(t *testing.T) {
		ds := mustFind(t, h.render(t, nil), "DaemonSet", "edgewire-agent")
		b, err := json.Marshal(ds)
		if err != nil {
			t.Fatal(err)
		}
		breaks := map[string][2]string{
			"bad hostPath type": {`"type":"CharDevice"`, `"type":"CharDev"`},
			"unknown field":     {`"hostNetwork":true`, `"hostNetwork":true,"hostNetworking":true`},
		}
		for what, r := range breaks {
			if !bytes.Contains(b, []byte(r[0])) {
				t.Fatalf("%s: rendered DaemonSet has no %s to break", what, r[0])
			}
			var broken object
			if err := json.Unmarshal(bytes.Replace(b, []byte(r[0]), []byte(r[1]), 1), &broken); err != nil {
				t.Fatal(err)
			}
			code, resp, err := c.dryRun(broken)
			if err != nil {
				t.Fatal(err)
			}
			if code/100 != 4 {
				t.Errorf("dry-run of a DaemonSet with a %s: HTTP %d, want a 4xx refusal: %s", what, code, resp)
			}
		}
	})
}

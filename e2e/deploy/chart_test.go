package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/edgewire/edgewire/coordinator/store/kubestore"
)

const (
	release   = "edgewire"
	namespace = "edgewire"
)

// helmTools are the helm CLI and yaml2json that hack/helm/build.sh builds.
type helmTools struct {
	root, helm, yaml2json string
}

// tools runs hack/helm/build.sh (a no-op when its cache is current) and
// returns the built tools. A failed build fails the test under CI=true
// and skips it elsewhere.
func tools(t testing.TB) helmTools {
	t.Helper()
	root := repoRoot(t)
	dir := os.Getenv("EDGEWIRE_HELM_BIN")
	if dir == "" {
		dir = filepath.Join(root, ".cache", "tools")
	}
	if _, err := os.Stat(filepath.Join(dir, "helm.stamp")); err != nil {
		t.Logf("building helm into %s; the first build takes a few minutes (hack/helm/build.sh does it ahead of time)", dir)
	}
	out, err := exec.Command(filepath.Join(root, "hack", "helm", "build.sh")).CombinedOutput()
	if len(out) > 0 {
		t.Logf("hack/helm/build.sh: %s", bytes.TrimSpace(out))
	}
	if err != nil {
		unavailable(t, "hack/helm/build.sh: %v\n%s", err, out)
	}
	return helmTools{root: root, helm: filepath.Join(dir, "helm"), yaml2json: filepath.Join(dir, "yaml2json")}
}

func (h helmTools) chart() string { return filepath.Join(h.root, "deploy", "helm", "edgewire") }

// writeValues writes values as a JSON file (JSON is YAML) for helm -f.
func writeValues(t testing.TB, values map[string]any) string {
	t.Helper()
	b, err := json.Marshal(values)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "values.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// template runs helm template on the chart with values (nil: defaults)
// and returns its YAML output, or an error holding helm's message.
func (h helmTools) template(t testing.TB, values map[string]any) ([]byte, error) {
	t.Helper()
	args := []string{"template", release, h.chart(), "--namespace", namespace}
	if values != nil {
		args = append(args, "-f", writeValues(t, values))
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(h.helm, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// objects converts a YAML stream into objects with yaml2json.
func (h helmTools) objects(t testing.TB, yaml []byte) []object {
	t.Helper()
	cmd := exec.Command(h.yaml2json)
	cmd.Stdin = bytes.NewReader(yaml)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("yaml2json: %v: %s", err, stderr.String())
	}
	var objs []object
	for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var o object
		if err := json.Unmarshal(line, &o); err != nil {
			t.Fatalf("yaml2json output %q: %v", line, err)
		}
		objs = append(objs, o)
	}
	return objs
}

// render renders the chart and parses the result; a render error fails the test.
func (h helmTools) render(t testing.TB, values map[string]any) []object {
	t.Helper()
	y, err := h.template(t, values)
	if err != nil {
		t.Fatal(err)
	}
	return h.objects(t, y)
}

// object is one rendered Kubernetes object as decoded JSON.
type object map[string]any

// get walks a path of map keys and returns what is there, or nil.
func (o object) get(path ...string) any {
	var cur any = map[string]any(o)
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

func (o object) str(path ...string) string { s, _ := o.get(path...).(string); return s }
func (o object) list(path ...string) []any { l, _ := o.get(path...).([]any); return l }
func (o object) kind() string              { return o.str("kind") }
func (o object) name() string              { return o.str("metadata", "name") }
func (o object) String() string            { return o.kind() + "/" + o.name() }

// sub wraps a nested map (e.g. a list element) as an object.
func sub(v any) object { m, _ := v.(map[string]any); return object(m) }

func find(objs []object, kind, name string) object {
	for _, o := range objs {
		if o.kind() == kind && o.name() == name {
			return o
		}
	}
	return nil
}

func mustFind(t testing.TB, objs []object, kind, name string) object {
	t.Helper()
	o := find(objs, kind, name)
	if o == nil {
		t.Fatalf("no %s %s among %v", kind, name, objs)
	}
	return o
}

func kindsAndNames(objs []object) []string {
	var s []string
	for _, o := range objs {
		s = append(s, o.String())
	}
	sort.Strings(s)
	return s
}

// container returns the first container of a workload's pod template.
func container(o object) object { return sub(o.list("spec", "template", "spec", "containers")[0]) }

func strs(l []any) []string {
	var s []string
	for _, v := range l {
		s = append(s, fmt.Sprint(v))
	}
	return s
}

var clusterScoped = map[string]bool{"ClusterRole": true, "ClusterRoleBinding": true, "Namespace": true}

// checkInvariants asserts what must hold for any values: identity fields,
// namespaces, unique names, selectors that match their pods, Service
// target ports that exist, and volume mounts with volumes.
func checkInvariants(t *testing.T, objs []object) {
	t.Helper()
	if len(objs) == 0 {
		t.Fatal("chart rendered no objects")
	}
	seen := map[string]bool{}
	podLabels := map[string]map[string]any{} // workload -> pod labels
	podPorts := map[string][]string{}        // workload -> container port names
	for _, o := range objs {
		if o.str("apiVersion") == "" || o.kind() == "" || o.name() == "" {
			t.Errorf("object without apiVersion, kind or metadata.name: %v", o)
			continue
		}
		if seen[o.String()] {
			t.Errorf("%s rendered twice", o)
		}
		seen[o.String()] = true
		if ns := o.str("metadata", "namespace"); clusterScoped[o.kind()] != (ns == "") || (ns != "" && ns != namespace) {
			t.Errorf("%s: metadata.namespace %q; want %q for namespaced kinds and none for cluster-scoped", o, ns, namespace)
		}
		if got := o.str("metadata", "labels", "app.kubernetes.io/part-of"); got != "edgewire" {
			t.Errorf("%s: label app.kubernetes.io/part-of: got %q, want edgewire", o, got)
		}
		switch o.kind() {
		case "Deployment", "DaemonSet":
			labels, _ := o.get("spec", "template", "metadata", "labels").(map[string]any)
			sel, _ := o.get("spec", "selector", "matchLabels").(map[string]any)
			if len(sel) == 0 {
				t.Errorf("%s: empty selector", o)
			}
			for k, v := range sel {
				if labels[k] != v {
					t.Errorf("%s: selector %s=%v does not match pod label %v", o, k, v, labels[k])
				}
			}
			podLabels[o.String()] = labels
			pod := sub(o.get("spec", "template", "spec"))
			volumes := map[string]bool{}
			for _, v := range pod.list("volumes") {
				volumes[sub(v).str("name")] = true
			}
			for _, c := range pod.list("containers") {
				if sub(c).str("image") == "" {
					t.Errorf("%s: container %s has no image", o, sub(c).str("name"))
				}
				var ports []string
				for _, p := range sub(c).list("ports") {
					ports = append(ports, sub(p).str("name"))
				}
				podPorts[o.String()] = append(podPorts[o.String()], ports...)
				checkProbes(t, o, sub(c), ports)
				for _, m := range sub(c).list("volumeMounts") {
					if !volumes[sub(m).str("name")] {
						t.Errorf("%s: volumeMount %s has no volume", o, sub(m).str("name"))
					}
				}
			}
		}
	}
	for _, o := range objs {
		if o.kind() != "Service" {
			continue
		}
		sel, _ := o.get("spec", "selector").(map[string]any)
		var matched []string
		for w, labels := range podLabels {
			ok := len(sel) > 0
			for k, v := range sel {
				ok = ok && labels[k] == v
			}
			if ok {
				matched = append(matched, w)
			}
		}
		if len(matched) != 1 {
			t.Errorf("%s: selector %v matches workloads %v; want exactly one", o, sel, matched)
			continue
		}
		for _, p := range o.list("spec", "ports") {
			if tp := sub(p).str("targetPort"); tp != "" && !slices.Contains(podPorts[matched[0]], tp) {
				t.Errorf("%s: targetPort %q is not a port of %s (%v)", o, tp, matched[0], podPorts[matched[0]])
			}
		}
	}
}

// checkProbes: every container has a readiness probe, and one for
// liveness unless it is a coordinator standby that would fail it; a probe
// by port name names a port of the container, and an HTTP probe asks for
// /readyz (readiness) or /healthz (liveness), which every daemon serves.
func checkProbes(t *testing.T, o object, c object, ports []string) {
	t.Helper()
	for _, kind := range []string{"readinessProbe", "livenessProbe"} {
		p := sub(c.get(kind))
		if p == nil {
			if kind == "livenessProbe" && o.kind() == "Deployment" && c.str("name") == "coordinator" && container(o).get("readinessProbe", "tcpSocket") != nil && o.get("spec", "replicas") != float64(1) {
				continue // standbys do not listen on the gRPC port: a TCP liveness probe would restart them
			}
			t.Errorf("%s: container %s has no %s", o, c.str("name"), kind)
			continue
		}
		port := p.get("httpGet", "port")
		if port == nil {
			port = p.get("tcpSocket", "port")
		}
		if name, ok := port.(string); !ok || !slices.Contains(ports, name) {
			t.Errorf("%s: %s %s port %v: want one of the container's named ports %q", o, c.str("name"), kind, port, ports)
		}
		if path := p.str("httpGet", "path"); path != "" && path != map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"}[kind] {
			t.Errorf("%s: %s %s path %q", o, c.str("name"), kind, path)
		}
	}
}

// servicePorts returns a Service's ports as "name port/protocol[:nodePort]".
func servicePorts(o object) []string {
	var s []string
	for _, p := range o.list("spec", "ports") {
		p := sub(p)
		e := fmt.Sprintf("%s %v/%s", p.str("name"), p.get("port"), p.str("protocol"))
		if np := p.get("nodePort"); np != nil {
			e += fmt.Sprintf(":%v", np)
		}
		s = append(s, e)
	}
	return s
}

// probe describes a container's probe: "GET [host] port path" or "TCP port".
func probe(c object, kind string) string {
	p := sub(c.get(kind))
	switch {
	case p == nil:
		return ""
	case p.get("httpGet") != nil:
		return strings.Join(strings.Fields(fmt.Sprintf("GET %s %v %s", p.str("httpGet", "host"), p.get("httpGet", "port"), p.str("httpGet", "path"))), " ")
	default:
		return fmt.Sprintf("TCP %v", p.get("tcpSocket", "port"))
	}
}

// containerPorts returns a container's ports as "name port/protocol".
func containerPorts(c object) []string {
	var s []string
	for _, p := range c.list("ports") {
		s = append(s, fmt.Sprintf("%s %v/%s", sub(p).str("name"), sub(p).get("containerPort"), sub(p).str("protocol")))
	}
	return s
}

// tolerationKeys returns the tolerations as "key operator effect".
func tolerationKeys(o object) []string {
	var s []string
	for _, v := range o.list("spec", "template", "spec", "tolerations") {
		v := sub(v)
		s = append(s, strings.TrimSpace(fmt.Sprintf("%s %s %s", v.str("key"), v.str("operator"), v.str("effect"))))
	}
	return s
}

func containsAll(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s: got %q, want it to contain %q", what, got, w)
		}
	}
}

var defaultTolerations = []string{
	"node-role.kubernetes.io/edge Exists NoSchedule",
	"node-role.kubernetes.io/master Exists NoSchedule",
	"node-role.kubernetes.io/control-plane Exists NoSchedule",
}

func TestChartDefaults(t *testing.T) {
	h := tools(t)
	objs := h.render(t, nil)
	checkInvariants(t, objs)

	want := []string{
		"ClusterRole/edgewire-coordinator",
		"ClusterRoleBinding/edgewire-coordinator",
		"ConfigMap/edgewire-relay-map",
		"DaemonSet/edgewire-agent",
		"Deployment/edgewire-coordinator",
		"PersistentVolumeClaim/edgewire-coordinator-data",
		"Service/edgewire-coordinator",
		"ServiceAccount/edgewire-agent",
		"ServiceAccount/edgewire-coordinator",
	}
	if got := kindsAndNames(objs); !slices.Equal(got, want) {
		t.Errorf("objects:\ngot  %q\nwant %q", got, want)
	}

	t.Run("rbac", func(t *testing.T) {
		role := mustFind(t, objs, "ClusterRole", "edgewire-coordinator")
		var grants []string
		for _, r := range role.list("rules") {
			r := sub(r)
			if len(r.list("resourceNames")) > 0 || len(r.list("nonResourceURLs")) > 0 {
				t.Errorf("rule %v: want no resourceNames or nonResourceURLs", r)
			}
			for _, g := range strs(r.list("apiGroups")) {
				for _, res := range strs(r.list("resources")) {
					for _, v := range strs(r.list("verbs")) {
						grants = append(grants, fmt.Sprintf("%s/%s:%s", g, res, v))
					}
				}
			}
		}
		sort.Strings(grants)
		wantGrants := []string{
			"/nodes:get", "/nodes:list", "/nodes:watch",
			"/services:get", "/services:list", "/services:watch",
			// Which node an agent's service account token is from.
			"authentication.k8s.io/tokenreviews:create",
			"discovery.k8s.io/endpointslices:get", "discovery.k8s.io/endpointslices:list", "discovery.k8s.io/endpointslices:watch",
		}
		if !slices.Equal(grants, wantGrants) {
			t.Errorf("ClusterRole grants:\ngot  %q\nwant %q", grants, wantGrants)
		}
		b := mustFind(t, objs, "ClusterRoleBinding", "edgewire-coordinator")
		if b.str("roleRef", "kind") != "ClusterRole" || b.str("roleRef", "name") != "edgewire-coordinator" {
			t.Errorf("ClusterRoleBinding roleRef: got %v, want ClusterRole edgewire-coordinator", b.get("roleRef"))
		}
		subj := b.list("subjects")
		if len(subj) != 1 || sub(subj[0]).str("kind") != "ServiceAccount" || sub(subj[0]).str("name") != "edgewire-coordinator" || sub(subj[0]).str("namespace") != namespace {
			t.Errorf("ClusterRoleBinding subjects: got %v, want ServiceAccount %s/edgewire-coordinator", subj, namespace)
		}
	})

	t.Run("coordinator", func(t *testing.T) {
		d := mustFind(t, objs, "Deployment", "edgewire-coordinator")
		if got := d.get("spec", "replicas"); got != float64(1) {
			t.Errorf("replicas: got %v, want 1", got)
		}
		if got := d.str("spec", "strategy", "type"); got != "Recreate" {
			t.Errorf("strategy: got %q, want Recreate", got)
		}
		if got := d.str("spec", "template", "spec", "serviceAccountName"); got != "edgewire-coordinator" {
			t.Errorf("serviceAccountName: got %q, want edgewire-coordinator", got)
		}
		c := container(d)
		containsAll(t, "coordinator args", strs(c.list("args")),
			"--data-dir=/var/lib/edgewire/coordinator", "--listen=:8443", "--relay-listen=:8444", "--stun-listen=:3478", "--stun-listen-alt=:3479",
			"--overlay-prefix=100.64.0.0/10", "--in-cluster", "--relay-map=/etc/edgewire/relay-map/relays.json",
			"--metrics-listen=:9090",
			// Only the agent DaemonSet's tokens prove a node's identity.
			"--agent-service-account="+namespace+"/edgewire-agent")
		for _, a := range strs(c.list("args")) {
			if strings.HasPrefix(a, "--mesh-key-file") {
				t.Errorf("coordinator args: got %q without a mesh key configured", a)
			}
		}
		var pvc bool
		for _, v := range d.list("spec", "template", "spec", "volumes") {
			if sub(v).str("name") == "data" {
				pvc = sub(v).str("persistentVolumeClaim", "claimName") == "edgewire-coordinator-data"
			}
		}
		if !pvc {
			t.Error("coordinator data volume: want PersistentVolumeClaim edgewire-coordinator-data")
		}
		if got := c.get("securityContext", "capabilities", "drop"); fmt.Sprint(got) != "[ALL]" {
			t.Errorf("coordinator capabilities drop: got %v, want [ALL]", got)
		}
		// Probes on the metrics listener: ready once it serves agents.
		if got := probe(c, "readinessProbe"); got != "GET metrics /readyz" {
			t.Errorf("coordinator readiness: got %q, want GET metrics /readyz", got)
		}
		if got := probe(c, "livenessProbe"); got != "GET metrics /healthz" {
			t.Errorf("coordinator liveness: got %q, want GET metrics /healthz", got)
		}
		if got := containerPorts(c); !slices.Contains(got, "metrics 9090/TCP") {
			t.Errorf("coordinator ports %q: want metrics 9090/TCP", got)
		}

		s := mustFind(t, objs, "Service", "edgewire-coordinator")
		if got := s.str("spec", "type"); got != "LoadBalancer" {
			t.Errorf("Service type: got %q, want LoadBalancer", got)
		}
		if got := s.str("spec", "externalTrafficPolicy"); got != "Local" {
			t.Errorf("externalTrafficPolicy: got %q, want Local (STUN must see the client's address)", got)
		}
		if got, want := servicePorts(s), []string{"grpc 8443/TCP", "relay 8444/TCP", "stun 3478/UDP", "stun-alt 3479/UDP"}; !slices.Equal(got, want) {
			t.Errorf("Service ports: got %q, want %q", got, want)
		}
		cm := mustFind(t, objs, "ConfigMap", "edgewire-relay-map")
		var rm map[string]any
		if err := json.Unmarshal([]byte(cm.str("data", "relays.json")), &rm); err != nil {
			t.Errorf("relays.json: %v", err)
		} else if got := fmt.Sprint(rm); got != "map[regions:[]]" {
			t.Errorf("relays.json: got %s, want an empty region list", got)
		}
	})

	t.Run("agent", func(t *testing.T) {
		ds := mustFind(t, objs, "DaemonSet", "edgewire-agent")
		pod := sub(ds.get("spec", "template", "spec"))
		if pod.get("hostNetwork") != true {
			t.Error("hostNetwork: want true")
		}
		if got := pod.str("dnsPolicy"); got != "ClusterFirstWithHostNet" {
			t.Errorf("dnsPolicy: got %q, want ClusterFirstWithHostNet", got)
		}
		if got := tolerationKeys(ds); !slices.Equal(got, defaultTolerations) {
			t.Errorf("tolerations: got %q, want %q", got, defaultTolerations)
		}
		c := container(ds)
		if c.get("securityContext", "privileged") != false {
			t.Errorf("privileged: got %v, want false", c.get("securityContext", "privileged"))
		}
		add := strs(c.list("securityContext", "capabilities", "add"))
		sort.Strings(add)
		if want := []string{"NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"}; !slices.Equal(add, want) {
			t.Errorf("capabilities add: got %q, want %q", add, want)
		}
		containsAll(t, "agent args", strs(c.list("args")),
			"run", "--coordinator=edgewire-coordinator.edgewire.svc:8443", "--name=$(NODE_NAME)", "--services=auto",
			"--state-dir=/var/lib/edgewire/agent", "--kubernetes-token-file=/var/run/secrets/edgewire/token",
			"--metrics-listen=127.0.0.1:9092", "--metrics-per-peer=active")
		// The metrics listener is on the node's loopback: the kubelet
		// probes it there.
		if got := probe(c, "readinessProbe"); got != "GET 127.0.0.1 metrics /readyz" {
			t.Errorf("agent readiness: got %q, want GET 127.0.0.1 metrics /readyz", got)
		}
		if got := probe(c, "livenessProbe"); got != "GET 127.0.0.1 metrics /healthz" {
			t.Errorf("agent liveness: got %q, want GET 127.0.0.1 metrics /healthz", got)
		}
		if got := containerPorts(c); !slices.Equal(got, []string{"metrics 9092/TCP"}) {
			t.Errorf("agent ports: got %q, want [metrics 9092/TCP]", got)
		}
		// Its identity: a token of its own service account, for the
		// audience "edgewire" only, and no API token besides.
		if got := pod.str("serviceAccountName"); got != "edgewire-agent" {
			t.Errorf("serviceAccountName: got %q, want edgewire-agent", got)
		}
		if pod.get("automountServiceAccountToken") != false {
			t.Error("automountServiceAccountToken: want false")
		}
		var audience, mount string
		for _, v := range pod.list("volumes") {
			for _, src := range sub(v).list("projected", "sources") {
				if sa := sub(src).get("serviceAccountToken"); sa != nil {
					audience = sub(sa).str("audience")
					mount = sub(v).str("name")
				}
			}
		}
		if audience != "edgewire" {
			t.Errorf("projected service account token audience: got %q, want edgewire", audience)
		}
		var mounted bool
		for _, m := range c.list("volumeMounts") {
			if sub(m).str("name") == mount && sub(m).str("mountPath") == "/var/run/secrets/edgewire" {
				mounted = true
			}
		}
		if !mounted {
			t.Errorf("identity volume %q: want it mounted at /var/run/secrets/edgewire", mount)
		}
		sa := mustFind(t, objs, "ServiceAccount", "edgewire-agent")
		if sa.get("automountServiceAccountToken") != false {
			t.Error("agent ServiceAccount automountServiceAccountToken: want false")
		}
		env := map[string]object{}
		for _, e := range c.list("env") {
			env[sub(e).str("name")] = sub(e)
		}
		if got := env["NODE_NAME"].str("valueFrom", "fieldRef", "fieldPath"); got != "spec.nodeName" {
			t.Errorf("NODE_NAME fieldPath: got %q, want spec.nodeName", got)
		}
		if got := env["EDGEWIRE_TOKEN"].str("valueFrom", "secretKeyRef", "name"); got != "edgewire-join-token" {
			t.Errorf("EDGEWIRE_TOKEN secret: got %q, want edgewire-join-token", got)
		}
		hostPaths := map[string]string{}
		for _, v := range pod.list("volumes") {
			if p := sub(v).str("hostPath", "path"); p != "" {
				hostPaths[p] = sub(v).str("hostPath", "type")
			}
		}
		for p, typ := range map[string]string{
			"/dev/net/tun":            "CharDevice",
			"/var/lib/edgewire/agent": "DirectoryOrCreate",
			"/var/run/wireguard":      "DirectoryOrCreate",
			"/run/edgewire":           "DirectoryOrCreate",
			"/run/xtables.lock":       "FileOrCreate",
		} {
			if hostPaths[p] != typ {
				t.Errorf("hostPath %s: got type %q, want %q", p, hostPaths[p], typ)
			}
		}
		if _, ok := hostPaths["/lib/modules"]; ok {
			t.Error("hostPath /lib/modules: want it only with agent.mountLibModules")
		}
	})
}

// editedValues turns on the optional parts and changes the common knobs.
func editedValues() map[string]any {
	return map[string]any{
		"overlayPrefixes": []any{"10.200.0.0/16", "fd7a:115c:a1e0::/48"},
		"meshKey":         map[string]any{"value": "bWVzaC1rZXktZm9yLXRlc3RzLW9ubHktMDEyMzQ1Njc4OQ=="},
		"relayMap": map[string]any{"regions": []any{map[string]any{
			"id": 2, "name": "eu-west", "host": "relay-eu.example.com", "port": 8444,
			"key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "stun_port": 3478, "stun_alt_port": 3479,
		}}},
		"coordinator": map[string]any{
			"service":     map[string]any{"type": "NodePort", "nodePorts": map[string]any{"grpc": 30443}},
			"ports":       map[string]any{"stunAlt": 0},
			"persistence": map[string]any{"enabled": false},
			"adminToken":  map[string]any{"value": "admin-token-for-tests"},
			"tlsSANs":     []any{"coord.example.com"},
		},
		"relay": map[string]any{
			"enabled":   true,
			"ticketKey": map[string]any{"value": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
			"meshPeers": []any{"https://edgewire-coordinator.edgewire.svc:8444/relay=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
			"service":   map[string]any{"type": "NodePort"},
		},
		"agent": map[string]any{
			"coordinator":      "coord.example.com:8443",
			"joinToken":        map[string]any{"value": "ewt1.abc.def.ghi"},
			"extraTolerations": []any{map[string]any{"key": "example.com/dedicated", "operator": "Exists", "effect": "NoExecute"}},
			"mountLibModules":  true,
		},
	}
}

func TestChartEditedValues(t *testing.T) {
	h := tools(t)
	objs := h.render(t, editedValues())
	checkInvariants(t, objs)

	for _, want := range []string{
		"Deployment/edgewire-relay", "Service/edgewire-relay", "PersistentVolumeClaim/edgewire-relay-data",
		"Secret/edgewire-mesh-key", "Secret/edgewire-relay-ticket-key", "Secret/edgewire-join-token", "Secret/edgewire-admin-token",
	} {
		if !slices.Contains(kindsAndNames(objs), want) {
			t.Errorf("objects %q: want %s", kindsAndNames(objs), want)
		}
	}
	if find(objs, "PersistentVolumeClaim", "edgewire-coordinator-data") != nil {
		t.Error("coordinator PVC rendered with persistence off")
	}

	d := mustFind(t, objs, "Deployment", "edgewire-coordinator")
	args := strs(container(d).list("args"))
	containsAll(t, "coordinator args", args, "--overlay-prefix=10.200.0.0/16", "--overlay-prefix=fd7a:115c:a1e0::/48",
		"--mesh-key-file=/etc/edgewire/mesh/mesh.key", "--tls-san=coord.example.com")
	if slices.Contains(args, "--overlay-prefix=100.64.0.0/10") {
		t.Errorf("coordinator args %q: want the default prefix replaced", args)
	}
	var mounts []string
	for _, m := range container(d).list("volumeMounts") {
		mounts = append(mounts, sub(m).str("mountPath"))
	}
	containsAll(t, "coordinator mounts", mounts, "/var/lib/edgewire/coordinator/admin.token")
	for _, v := range d.list("spec", "template", "spec", "volumes") {
		if sub(v).str("name") == "data" && sub(v).get("emptyDir") == nil {
			t.Errorf("coordinator data volume: got %v, want emptyDir with persistence off", v)
		}
	}

	s := mustFind(t, objs, "Service", "edgewire-coordinator")
	if got := s.str("spec", "type"); got != "NodePort" {
		t.Errorf("Service type: got %q, want NodePort", got)
	}
	// The second STUN port turned off: no flag value, no port.
	if got, want := servicePorts(s), []string{"grpc 8443/TCP:30443", "relay 8444/TCP", "stun 3478/UDP"}; !slices.Equal(got, want) {
		t.Errorf("Service ports: got %q, want %q", got, want)
	}
	containsAll(t, "coordinator args", args, "--stun-listen-alt=")

	r := mustFind(t, objs, "Deployment", "edgewire-relay")
	if got, want := servicePorts(mustFind(t, objs, "Service", "edgewire-relay")), []string{"relay 8444/TCP", "stun 3478/UDP", "stun-alt 3479/UDP"}; !slices.Equal(got, want) {
		t.Errorf("relay Service ports: got %q, want %q", got, want)
	}
	containsAll(t, "relay args", strs(container(r).list("args")), "--stun-listen=:3478", "--stun-listen-alt=:3479",
		"--ticket-key=/etc/edgewire/ticket/ticket.key.pub", "--mesh-key-file=/etc/edgewire/mesh/mesh.key",
		"--mesh-peer=https://edgewire-coordinator.edgewire.svc:8444/relay=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")

	cm := mustFind(t, objs, "ConfigMap", "edgewire-relay-map")
	if !strings.Contains(cm.str("data", "relays.json"), `"relay-eu.example.com"`) {
		t.Errorf("relays.json: got %s, want the eu-west region", cm.str("data", "relays.json"))
	}

	ds := mustFind(t, objs, "DaemonSet", "edgewire-agent")
	if got, want := tolerationKeys(ds), append(slices.Clone(defaultTolerations), "example.com/dedicated Exists NoExecute"); !slices.Equal(got, want) {
		t.Errorf("tolerations: got %q, want %q", got, want)
	}
	containsAll(t, "agent args", strs(container(ds).list("args")), "--coordinator=coord.example.com:8443")
	sec := mustFind(t, objs, "Secret", "edgewire-join-token")
	if got := sec.str("data", "token"); got != "ZXd0MS5hYmMuZGVmLmdoaQ==" {
		t.Errorf("join token Secret data.token: got %q, want base64 of the token", got)
	}
}

// replicatedValues run the coordinator on the Kubernetes store.
func replicatedValues() map[string]any {
	return map[string]any{"coordinator": map[string]any{"store": "kubernetes", "replicas": 3, "leaseDuration": "4s"}}
}

// TestChartReplicated: store kubernetes renders replicas that share the
// API server (no volume of their own), elect a leader (RBAC for the store,
// the Lease and the Secret), keep one up through drains, prefer different
// nodes, and are ready only while they serve.
func TestChartReplicated(t *testing.T) {
	h := tools(t)
	objs := h.render(t, replicatedValues())
	checkInvariants(t, objs)
	names := kindsAndNames(objs)
	for _, want := range []string{"PodDisruptionBudget/edgewire-coordinator", "Role/edgewire-coordinator-store", "RoleBinding/edgewire-coordinator-store"} {
		if !slices.Contains(names, want) {
			t.Errorf("objects %q: want %s", names, want)
		}
	}
	if find(objs, "PersistentVolumeClaim", "edgewire-coordinator-data") != nil {
		t.Error("a coordinator PVC with the Kubernetes store")
	}
	d := mustFind(t, objs, "Deployment", "edgewire-coordinator")
	if got := d.get("spec", "replicas"); got != float64(3) {
		t.Errorf("replicas: got %v, want 3", got)
	}
	if got := d.str("spec", "strategy", "type"); got != "RollingUpdate" {
		t.Errorf("strategy: got %q, want RollingUpdate", got)
	}
	c := container(d)
	containsAll(t, "coordinator args", strs(c.list("args")), "--store=kubernetes", "--lease-duration=4s", "--in-cluster")
	var env []string
	for _, e := range c.list("env") {
		env = append(env, sub(e).str("name")+"="+sub(e).str("valueFrom", "fieldRef", "fieldPath"))
	}
	containsAll(t, "coordinator env", env, "POD_NAME=metadata.name", "POD_NAMESPACE=metadata.namespace")
	// Ready: /readyz, which only the serving leader answers 200; alive:
	// /healthz, which standbys answer too (they serve no gRPC port, so a
	// TCP liveness probe there would restart them).
	if got := probe(c, "readinessProbe"); got != "GET metrics /readyz" {
		t.Errorf("readiness: got %q, want GET metrics /readyz (only the leader is ready)", got)
	}
	if got := probe(c, "livenessProbe"); got != "GET metrics /healthz" {
		t.Errorf("liveness: got %q, want GET metrics /healthz (standbys answer it)", got)
	}
	if got := c.get("readinessProbe", "periodSeconds"); got != float64(1) {
		t.Errorf("readiness period: got %v, want 1 (a new leader is found within a second)", got)
	}

	// Without a metrics listener the pod network reaches, the replicas
	// fall back to TCP on the gRPC port, and no liveness probe.
	loop := replicatedValues()
	loop["coordinator"].(map[string]any)["metricsListen"] = "127.0.0.1:9090"
	lc := container(mustFind(t, h.render(t, loop), "Deployment", "edgewire-coordinator"))
	if got := probe(lc, "readinessProbe"); got != "TCP grpc" {
		t.Errorf("loopback metrics: readiness %q, want TCP grpc", got)
	}
	if lc.get("livenessProbe") != nil {
		t.Error("loopback metrics: a liveness probe on the gRPC port would restart every standby")
	}
	for _, v := range d.list("spec", "template", "spec", "volumes") {
		if sub(v).str("name") == "data" && sub(v).get("emptyDir") == nil {
			t.Errorf("coordinator data volume: got %v, want emptyDir (the state is in the API server)", v)
		}
	}
	if d.get("spec", "template", "spec", "affinity", "podAntiAffinity") == nil {
		t.Error("replicas have no anti-affinity")
	}
	role := mustFind(t, objs, "Role", "edgewire-coordinator-store")
	var grants []string
	for _, r := range role.list("rules") {
		for _, res := range strs(sub(r).list("resources")) {
			grants = append(grants, res+":"+strings.Join(strs(sub(r).list("verbs")), ","))
		}
	}
	containsAll(t, "store role", grants, "edgewirenodes:get,list,watch,create,update,delete", "leases:get,create,update", "secrets:get,create")

	// The chart's CRDs are the ones the store was tested with.
	crds, err := os.ReadFile(filepath.Join(h.root, "deploy", "helm", "edgewire", "crds", "edgewire.io.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(crds, kubestore.CRDs) {
		t.Error("deploy/helm/edgewire/crds/edgewire.io.yaml differs from coordinator/store/kubestore/crds.yaml; copy it over")
	}
}

// monitoredValues turn on a ServiceMonitor or PodMonitor (kind), the
// relay, and agents that listen on the node's address.
func monitoredValues(kind string) map[string]any {
	v := editedValues()
	v["agent"].(map[string]any)["metricsListen"] = "$(HOST_IP):9092"
	v["monitoring"] = map[string]any{kind: map[string]any{"enabled": true, "interval": "15s", "labels": map[string]any{"release": "kube-prometheus-stack"}}}
	return v
}

// TestChartMonitoring: with monitoring.serviceMonitor the chart renders a
// ServiceMonitor whose selector finds one headless metrics Service per
// component, each on its pods' metrics port; with monitoring.podMonitor a
// PodMonitor over the pods' metrics ports. Both relabel node and
// component, which the alert rules group by. Off by default.
func TestChartMonitoring(t *testing.T) {
	h := tools(t)
	for _, o := range h.render(t, nil) {
		if strings.HasPrefix(o.str("apiVersion"), "monitoring.coreos.com/") || strings.HasSuffix(o.name(), "-metrics") {
			t.Errorf("defaults render %s; want monitoring off by default", o)
		}
	}
	relabeled := func(t *testing.T, ep object) {
		t.Helper()
		if ep.str("port") != "metrics" || ep.str("path") != "/metrics" || ep.str("interval") != "15s" {
			t.Errorf("endpoint %v: want port metrics, path /metrics, interval 15s", ep)
		}
		var got []string
		for _, r := range ep.list("relabelings") {
			got = append(got, strings.Join(strs(sub(r).list("sourceLabels")), ",")+"->"+sub(r).str("targetLabel"))
		}
		want := []string{"__meta_kubernetes_pod_node_name->node", "__meta_kubernetes_pod_label_app_kubernetes_io_component->component"}
		if !slices.Equal(got, want) {
			t.Errorf("relabelings: got %q, want %q", got, want)
		}
	}

	t.Run("ServiceMonitor", func(t *testing.T) {
		objs := h.render(t, monitoredValues("serviceMonitor"))
		checkInvariants(t, objs)
		sm := mustFind(t, objs, "ServiceMonitor", "edgewire")
		if sm.str("apiVersion") != "monitoring.coreos.com/v1" {
			t.Errorf("ServiceMonitor apiVersion %q, want monitoring.coreos.com/v1", sm.str("apiVersion"))
		}
		if sm.str("metadata", "labels", "release") != "kube-prometheus-stack" {
			t.Errorf("ServiceMonitor labels %v: want monitoring.serviceMonitor.labels", sm.get("metadata", "labels"))
		}
		if got := strs(sm.list("spec", "namespaceSelector", "matchNames")); !slices.Equal(got, []string{namespace}) {
			t.Errorf("namespaceSelector: got %q, want [%s]", got, namespace)
		}
		eps := sm.list("spec", "endpoints")
		if len(eps) != 1 {
			t.Fatalf("endpoints: got %v, want one", eps)
		}
		relabeled(t, sub(eps[0]))
		sel, _ := sm.get("spec", "selector", "matchLabels").(map[string]any)
		var selected []string
		for _, o := range objs {
			if o.kind() != "Service" {
				continue
			}
			match := len(sel) > 0
			for k, v := range sel {
				match = match && o.str("metadata", "labels", k) == v
			}
			if !match {
				continue
			}
			selected = append(selected, o.name())
			if o.str("spec", "clusterIP") != "None" || o.get("spec", "publishNotReadyAddresses") != true {
				t.Errorf("%s: want headless with publishNotReadyAddresses (standbys are scraped too)", o)
			}
			if got := servicePorts(o); len(got) != 1 || !strings.HasPrefix(got[0], "metrics ") {
				t.Errorf("%s ports %q: want one named metrics", o, got)
			}
		}
		sort.Strings(selected)
		if want := []string{"edgewire-agent-metrics", "edgewire-coordinator-metrics", "edgewire-relay-metrics"}; !slices.Equal(selected, want) {
			t.Errorf("ServiceMonitor selects Services %q, want %q (and not the public coordinator Service)", selected, want)
		}
		// The agent listens on the node's address and is probed there.
		ds := mustFind(t, objs, "DaemonSet", "edgewire-agent")
		c := container(ds)
		containsAll(t, "agent args", strs(c.list("args")), "--metrics-listen=$(HOST_IP):9092")
		if got := probe(c, "readinessProbe"); got != "GET metrics /readyz" {
			t.Errorf("agent readiness: got %q, want GET metrics /readyz (the pod's address is the node's)", got)
		}
		var hostIP string
		for _, e := range c.list("env") {
			if sub(e).str("name") == "HOST_IP" {
				hostIP = sub(e).str("valueFrom", "fieldRef", "fieldPath")
			}
		}
		if hostIP != "status.hostIP" {
			t.Errorf("agent env HOST_IP: got fieldPath %q, want status.hostIP", hostIP)
		}
		r := container(mustFind(t, objs, "Deployment", "edgewire-relay"))
		if got := containerPorts(r); !slices.Contains(got, "metrics 9091/TCP") {
			t.Errorf("relay ports %q: want metrics 9091/TCP", got)
		}
	})

	t.Run("PodMonitor", func(t *testing.T) {
		objs := h.render(t, monitoredValues("podMonitor"))
		checkInvariants(t, objs)
		if find(objs, "ServiceMonitor", "edgewire") != nil {
			t.Error("a ServiceMonitor with only monitoring.podMonitor enabled")
		}
		pm := mustFind(t, objs, "PodMonitor", "edgewire")
		eps := pm.list("spec", "podMetricsEndpoints")
		if len(eps) != 1 {
			t.Fatalf("podMetricsEndpoints: got %v, want one", eps)
		}
		relabeled(t, sub(eps[0]))
		sel, _ := pm.get("spec", "selector", "matchLabels").(map[string]any)
		var scraped []string
		for _, o := range objs {
			if o.kind() != "Deployment" && o.kind() != "DaemonSet" {
				continue
			}
			match := len(sel) > 0
			for k, v := range sel {
				match = match && o.str("spec", "template", "metadata", "labels", k) == v
			}
			if match && slices.ContainsFunc(containerPorts(container(o)), func(p string) bool { return strings.HasPrefix(p, "metrics ") }) {
				scraped = append(scraped, o.String())
			}
		}
		sort.Strings(scraped)
		if want := []string{"DaemonSet/edgewire-agent", "Deployment/edgewire-coordinator", "Deployment/edgewire-relay"}; !slices.Equal(scraped, want) {
			t.Errorf("PodMonitor scrapes %q, want %q", scraped, want)
		}
	})

	// The PrometheusRule carries deploy/monitoring's rules as they are.
	t.Run("PrometheusRule", func(t *testing.T) {
		shipped := readDeploy(t, alertsFile)
		if inChart := readDeploy(t, "helm/edgewire/files/edgewire-alerts.yaml"); inChart != shipped {
			t.Fatalf("deploy/helm/edgewire/files/edgewire-alerts.yaml differs from deploy/%s; run deploy/render.sh", alertsFile)
		}
		objs := h.render(t, map[string]any{"monitoring": map[string]any{"prometheusRule": map[string]any{"enabled": true, "labels": map[string]any{"release": "kube-prometheus-stack"}}}})
		checkInvariants(t, objs)
		pr := mustFind(t, objs, "PrometheusRule", "edgewire")
		if pr.str("metadata", "labels", "release") != "kube-prometheus-stack" {
			t.Errorf("PrometheusRule labels %v: want monitoring.prometheusRule.labels", pr.get("metadata", "labels"))
		}
		rules := h.objects(t, []byte(shipped))
		if len(rules) != 1 {
			t.Fatalf("%s: got %d documents, want 1", alertsFile, len(rules))
		}
		got, _ := json.Marshal(pr.get("spec", "groups"))
		want, _ := json.Marshal(rules[0].get("groups"))
		if string(got) != string(want) || len(want) < 100 {
			t.Errorf("PrometheusRule groups differ from %s:\ngot  %s\nwant %s", alertsFile, got, want)
		}
	})
}

// TestChartRefusesIncompleteValues checks that values which would deploy
// a broken relay or agent stop the render with a message saying what to set.
func TestChartRefusesIncompleteValues(t *testing.T) {
	h := tools(t)
	cases := []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"relay without mesh key", map[string]any{"relay": map[string]any{"enabled": true, "ticketKey": map[string]any{"value": "x"}}}, "set meshKey.existingSecret or meshKey.value"},
		{"relay without ticket key", map[string]any{"relay": map[string]any{"enabled": true}, "meshKey": map[string]any{"existingSecret": "m"}}, "relay.ticketKey"},
		{"short mesh key", map[string]any{"meshKey": map[string]any{"value": "short"}}, "at least 32 characters"},
		{"bad join token", map[string]any{"agent": map[string]any{"joinToken": map[string]any{"value": "hunter2"}}}, "must be a join token"},
		{"unknown store", map[string]any{"coordinator": map[string]any{"store": "etcd"}}, "'bolt', 'kubernetes'"},
		{"kubernetes store without the API", map[string]any{"coordinator": map[string]any{"store": "kubernetes", "watchKubernetes": false}}, "set coordinator.watchKubernetes true"},
		// values.schema.json: misspelt keys, wrong types, bad enums and forms.
		{"unknown key", map[string]any{"agent": map[string]any{"metricListen": ":9092"}}, "additional properties 'metricListen' not allowed"},
		{"unknown top-level key", map[string]any{"monitor": map[string]any{}}, "additional properties 'monitor' not allowed"},
		{"string replicas", map[string]any{"coordinator": map[string]any{"replicas": "three"}}, "/coordinator/replicas"},
		{"bad per-peer metrics", map[string]any{"agent": map[string]any{"metricsPerPeer": "some"}}, "'active', 'all', 'off'"},
		{"listen without port", map[string]any{"coordinator": map[string]any{"metricsListen": "0.0.0.0"}}, "/coordinator/metricsListen"},
		{"bad lease duration", map[string]any{"coordinator": map[string]any{"leaseDuration": "6 seconds"}}, "/coordinator/leaseDuration"},
		{"port out of range", map[string]any{"agent": map[string]any{"listenPort": 70000}}, "/agent/listenPort"},
		{"bad monitor interval", map[string]any{"monitoring": map[string]any{"serviceMonitor": map[string]any{"interval": "often"}}}, "/monitoring/serviceMonitor/interval"},
		// Monitoring that could not scrape.
		{"monitored loopback agent", map[string]any{"monitoring": map[string]any{"serviceMonitor": map[string]any{"enabled": true}}}, `set it to "$(HOST_IP):9092"`},
		{"monitored loopback coordinator", map[string]any{"monitoring": map[string]any{"podMonitor": map[string]any{"enabled": true}},
			"agent": map[string]any{"metricsListen": "$(HOST_IP):9092"}, "coordinator": map[string]any{"metricsListen": "127.0.0.1:9090"}}, `coordinator.metricsListen "127.0.0.1:9090" cannot be scraped`},
		{"both monitors", map[string]any{"monitoring": map[string]any{"serviceMonitor": map[string]any{"enabled": true}, "podMonitor": map[string]any{"enabled": true}},
			"agent": map[string]any{"metricsListen": "$(HOST_IP):9092"}}, "enable one"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.template(t, tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("render error: got %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestChartLint(t *testing.T) {
	h := tools(t)
	for name, values := range map[string]map[string]any{"defaults": nil, "edited": editedValues(), "replicated": replicatedValues(), "monitored": monitoredValues("serviceMonitor")} {
		t.Run(name, func(t *testing.T) {
			args := []string{"lint", "--strict", h.chart(), "--namespace", namespace}
			if values != nil {
				args = append(args, "-f", writeValues(t, values))
			}
			if out, err := exec.Command(h.helm, args...).CombinedOutput(); err != nil {
				t.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			// NOTES.txt is rendered only by install; --dry-run=client needs no cluster.
			args = []string{"install", release, h.chart(), "--namespace", namespace, "--dry-run=client"}
			if values != nil {
				args = append(args, "-f", writeValues(t, values))
			}
			out, err := exec.Command(h.helm, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			if !strings.Contains(string(out), "NOTES:\nedgewire ") || !strings.Contains(string(out), "token create") {
				t.Errorf("helm install --dry-run output has no NOTES with the join-token steps:\n%s", out)
			}
		})
	}
}

// TestChartLintChecksSchema: helm lint validates the values against
// values.schema.json, so a values file with a misspelt key fails it (the
// schema check make check-deploy relies on).
func TestChartLintChecksSchema(t *testing.T) {
	h := tools(t)
	bad := writeValues(t, map[string]any{"agent": map[string]any{"metricsPerPeer": "active", "metricListen": ":9092"}})
	out, err := exec.Command(h.helm, "lint", "--strict", h.chart(), "--namespace", namespace, "-f", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "metricListen") {
		t.Errorf("helm lint with a misspelt key: got %v\n%s\nwant a failure naming metricListen", err, out)
	}
}

// TestPlainManifestsMatchChart keeps deploy/kubernetes from drifting: the
// committed edgewire.yaml must be exactly what deploy/render.sh makes.
func TestPlainManifestsMatchChart(t *testing.T) {
	h := tools(t)
	out := filepath.Join(t.TempDir(), "edgewire.yaml")
	if b, err := exec.Command(filepath.Join(h.root, "deploy", "render.sh"), out).CombinedOutput(); err != nil {
		t.Fatalf("deploy/render.sh: %v\n%s", err, b)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(h.root, "deploy", "kubernetes", "edgewire.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("deploy/kubernetes/edgewire.yaml differs from the chart rendered with default values; run deploy/render.sh\n%s", firstDiff(got, want))
	}
	// The manifests hold what the chart renders, and their namespace exists.
	if got, want := kindsAndNames(h.objects(t, got)), kindsAndNames(h.render(t, nil)); !slices.Equal(got, want) {
		t.Errorf("deploy/kubernetes/edgewire.yaml objects: got %q, want %q", got, want)
	}
	ns := h.objects(t, []byte(readDeploy(t, "kubernetes/00-namespace.yaml")))
	if len(ns) != 1 || ns[0].kind() != "Namespace" || ns[0].name() != namespace {
		t.Errorf("deploy/kubernetes/00-namespace.yaml: got %v, want Namespace %s", ns, namespace)
	}
}

// firstDiff describes the first line where a and b differ.
func firstDiff(a, b []byte) string {
	al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n  file:     %q\n  rendered: %q", i+1, x, y)
		}
	}
	return "no line differs"
}

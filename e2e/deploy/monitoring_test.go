package deploy

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The alert rules and dashboard in deploy/monitoring, checked the way
// Prometheus and Grafana would read them, against the metrics the daemons
// really register.

const (
	alertsFile    = "monitoring/edgewire-alerts.yaml"
	alertsTest    = "monitoring/edgewire-alerts_test.yaml"
	dashboardFile = "monitoring/edgewire-dashboard.json"
)

func promtool(t *testing.T) string {
	t.Helper()
	return lookTool(t, "promtool", "prometheus")
}

// TestAlertRules runs promtool check rules and the rules' unit tests, and
// shows the check can fail: a copy with one broken expression is refused.
func TestAlertRules(t *testing.T) {
	pt := promtool(t)
	root := repoRoot(t)
	rules := filepath.Join(root, "deploy", alertsFile)
	if out, err := exec.Command(pt, "check", "rules", rules).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules %s: %v\n%s", rules, err, out)
	}
	cmd := exec.Command(pt, "test", "rules", filepath.Base(alertsTest))
	cmd.Dir = filepath.Join(root, "deploy", "monitoring")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool test rules %s: %v\n%s", alertsTest, err, out)
	}

	b := readDeploy(t, alertsFile)
	const good = "max by (namespace) (edgewire_coordinator_ready) < 1"
	if !strings.Contains(b, good) {
		t.Fatalf("%s has no %q to break", alertsFile, good)
	}
	broken := filepath.Join(t.TempDir(), "broken.yaml")
	if err := os.WriteFile(broken, []byte(strings.Replace(b, good, "max by (namespace) (edgewire_coordinator_ready) <", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(pt, "check", "rules", broken).CombinedOutput(); err == nil {
		t.Errorf("promtool check rules accepted a rule without its right operand:\n%s", out)
	}
}

// dashboard is the part of a Grafana dashboard the checks read.
type dashboard struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Panels []struct {
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal([]byte(readDeploy(t, dashboardFile)), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// dashboardExprs returns every query of the dashboard with Grafana's
// variables replaced as Grafana would.
func dashboardExprs(t *testing.T, d dashboard) []string {
	t.Helper()
	var exprs []string
	r := strings.NewReplacer("$namespace", ".*", "$__rate_interval", "5m", "${datasource}", "")
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: data source %q, want the ${datasource} variable", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, r.Replace(tg.Expr))
		}
	}
	return exprs
}

// TestDashboardQueries: every panel queries through the data source
// variable, and every query parses as PromQL (promtool reads them as
// recording rules).
func TestDashboardQueries(t *testing.T) {
	d := readDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard title %q, uid %q: want both", d.Title, d.UID)
	}
	exprs := dashboardExprs(t, d)
	if len(exprs) < 10 {
		t.Fatalf("dashboard has %d queries, want at least 10", len(exprs))
	}
	pt := promtool(t)
	check := func(exprs []string) ([]byte, error) {
		var b strings.Builder
		b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
		for i, e := range exprs {
			q, _ := json.Marshal(e) // a JSON string is a YAML string
			fmt.Fprintf(&b, "      - record: dashboard:query%d\n        expr: %s\n", i, q)
		}
		f := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
		if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return exec.Command(pt, "check", "rules", f).CombinedOutput()
	}
	if out, err := check(exprs); err != nil {
		t.Errorf("dashboard queries do not parse: %v\n%s", err, out)
	}
	if out, err := check([]string{"sum by (path (edgewire_agent_peers)"}); err == nil {
		t.Errorf("promtool accepted a query with an unclosed parenthesis:\n%s", out)
	}
}

// registeredMetrics returns the metric names the daemons register: every
// Go string literal of a metric name (edgewire_...) in the non-test
// sources outside e2e/ and bench/, and every string literal there (label
// values such as "relay" or "offline").
func registeredMetrics(t *testing.T) (names, literals map[string]bool) {
	t.Helper()
	root := repoRoot(t)
	names, literals = map[string]bool{}, map[string]bool{}
	metricName := regexp.MustCompile(`^edgewire_[a-z0-9_]+$`)
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == "e2e" || rel == "bench" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			literals[s] = true
			if metricName.MatchString(s) {
				names[s] = true
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names, literals
}

var (
	metricRef  = regexp.MustCompile(`\bedgewire_[a-z0-9_]+\b`)
	matcherRef = regexp.MustCompile(`\b([a-z_]+)="([^"]*)"`)
)

// TestMonitoringMetricsExist: every metric the alert rules and dashboard
// name is one the code registers (a histogram's _bucket, _sum and _count
// count as its own), and every label value they match exactly appears in
// the code, so a renamed metric or label value breaks this test, not a
// silent alert.
func TestMonitoringMetricsExist(t *testing.T) {
	names, literals := registeredMetrics(t)
	for _, want := range []string{"edgewire_agent_peers", "edgewire_coordinator_ready", "edgewire_relay_drops_total", "edgewire_build_info"} {
		if !names[want] {
			t.Fatalf("registered metrics %d, without %s: the source scan is broken", len(names), want)
		}
	}
	registered := func(m string) bool {
		if names[m] {
			return true
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(m, suf); ok && names[b] {
				return true
			}
		}
		return false
	}
	if registered("edgewire_agent_no_such_metric") {
		t.Fatal("a made-up metric counts as registered")
	}
	// The labels Prometheus or the ServiceMonitor add, not the code.
	external := map[string]bool{"namespace": true, "pod": true, "node": true, "severity": true}
	var exprs []string
	alerts := readDeploy(t, alertsFile)
	for _, line := range strings.Split(alerts, "\n") {
		if l := strings.TrimSpace(line); !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "summary:") && !strings.HasPrefix(l, "description:") {
			exprs = append(exprs, l)
		}
	}
	exprs = append(exprs, dashboardExprs(t, readDashboard(t))...)
	seen := map[string]bool{}
	for _, e := range exprs {
		for _, m := range metricRef.FindAllString(e, -1) {
			seen[m] = true
			if !registered(m) {
				t.Errorf("%q names %s, which no daemon registers", e, m)
			}
		}
		if !metricRef.MatchString(e) {
			continue
		}
		for _, mm := range matcherRef.FindAllStringSubmatch(e, -1) {
			if !external[mm[1]] && !literals[mm[2]] {
				t.Errorf("%q matches %s=%q; no such label value in the code", e, mm[1], mm[2])
			}
		}
	}
	if len(seen) < 15 {
		t.Errorf("rules and dashboard name %d metrics, want at least 15: %v", len(seen), slices.Sorted(func(yield func(string) bool) {
			for m := range seen {
				if !yield(m) {
					return
				}
			}
		}))
	}
}

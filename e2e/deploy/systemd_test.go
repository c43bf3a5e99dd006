package deploy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var units = []string{"edgewire-agent.service", "edgewire-coordinator.service", "edgewire-relay.service"}

// verifyUnit runs systemd-analyze verify on a copy of the unit text in dir
// whose /usr/local/bin/ binaries point at stub executables in dir/bin (verify
// refuses a unit whose ExecStart binary does not exist). It returns what
// verify said about the unit; nil means the unit is clean. verify exits 0
// on unknown keys and unparsable values and only prints a warning, so any
// line naming the unit counts as a finding.
func verifyUnit(t *testing.T, analyze, dir, name, text string) []string {
	t.Helper()
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"edgewire-agent", "edgewire-coordinator", "edgewire-relay"} {
		if err := os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, name)
	text = strings.ReplaceAll(text, "/usr/local/bin/", bin+"/")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", "--man=no", path)
	out, err := cmd.CombinedOutput()
	var findings []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(line, name) {
			findings = append(findings, line)
		}
	}
	if err != nil && len(findings) == 0 {
		findings = append(findings, fmt.Sprintf("systemd-analyze verify: %v: %s", err, out))
	}
	return findings
}

func readDeploy(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSystemdUnitsVerify(t *testing.T) {
	analyze := lookTool(t, "systemd-analyze", "systemd")
	for _, name := range units {
		t.Run(name, func(t *testing.T) {
			if f := verifyUnit(t, analyze, t.TempDir(), name, readDeploy(t, "systemd/"+name)); len(f) > 0 {
				t.Errorf("systemd-analyze verify %s: got findings, want none:\n%s", name, strings.Join(f, "\n"))
			}
		})
	}

	// The check above must be able to fail: each broken copy of the agent
	// unit has to draw a finding. (systemd 252's verify does not check
	// capability names; TestSystemdUnitSettings pins those.)
	good := readDeploy(t, "systemd/edgewire-agent.service")
	broken := []struct {
		name, old, new string
	}{
		{"misspelt key", "ProtectSystem=strict", "ProtectSystm=strict"},
		{"bad service type", "Type=notify", "Type=notifyy"},
		{"misspelt section", "[Service]", "[Servic]"},
		{"missing binary", "/usr/local/bin/edgewire-agent run", "/usr/local/bin/edgewire-agnt run"},
		{"relative ExecStart", "ExecStart=/usr/local/bin/edgewire-agent", "ExecStart=edgewire-agent"},
		{"bad restart value", "Restart=always", "Restart=sometimes"},
	}
	for _, b := range broken {
		t.Run("broken/"+b.name, func(t *testing.T) {
			if !strings.Contains(good, b.old) {
				t.Fatalf("agent unit has no %q to break", b.old)
			}
			text := strings.Replace(good, b.old, b.new, 1)
			if f := verifyUnit(t, analyze, t.TempDir(), "edgewire-agent.service", text); len(f) == 0 {
				t.Errorf("verify of a unit with %s: got no findings, want at least one", b.name)
			}
		})
	}
}

// unitSettings parses a unit file into section -> key -> values (in order).
func unitSettings(t *testing.T, text string) map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string][]string{}
	var section string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("unit line %q: want key=value inside a section", line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

// TestSystemdUnitSettings pins the settings the daemons and the install
// script rely on, so a cleanup of a unit cannot drop them silently.
func TestSystemdUnitSettings(t *testing.T) {
	want := map[string]map[string]string{
		"edgewire-agent.service": {
			"Type":                    "notify",
			"EnvironmentFile":         "-/etc/edgewire/agent.env",
			"Restart":                 "always",
			"RestartSec":              "2",
			"CapabilityBoundingSet":   "CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW",
			"AmbientCapabilities":     "CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW",
			"NoNewPrivileges":         "yes",
			"ProtectSystem":           "strict",
			"ProtectHome":             "yes",
			"StateDirectory":          "edgewire/agent",
			"RuntimeDirectory":        "edgewire",
			"DeviceAllow":             "/dev/net/tun rw",
			"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
		},
		"edgewire-coordinator.service": {
			"DynamicUser":           "yes",
			"StateDirectory":        "edgewire/coordinator",
			"CapabilityBoundingSet": "",
			"NoNewPrivileges":       "yes",
			"ProtectSystem":         "strict",
		},
		"edgewire-relay.service": {
			"DynamicUser":           "yes",
			"StateDirectory":        "edgewire/relay",
			"CapabilityBoundingSet": "",
			"LoadCredential":        "mesh.key:/etc/edgewire/mesh.key",
		},
	}
	execStart := map[string][]string{
		"edgewire-agent.service":       {"/usr/local/bin/edgewire-agent run", "--state-dir /var/lib/edgewire/agent", "--coordinator ${EDGEWIRE_COORDINATOR}"},
		"edgewire-coordinator.service": {"/usr/local/bin/edgewire-coordinator", "--data-dir /var/lib/edgewire/coordinator"},
		"edgewire-relay.service":       {"/usr/local/bin/edgewire-relay", "--data-dir /var/lib/edgewire/relay", "--mesh-key-file %d/mesh.key"},
	}
	for _, name := range units {
		t.Run(name, func(t *testing.T) {
			s := unitSettings(t, readDeploy(t, "systemd/"+name))
			svc := s["Service"]
			for k, v := range want[name] {
				if got := svc[k]; !slices.Contains(got, v) {
					t.Errorf("[Service] %s: got %q, want %q among them", k, got, v)
				}
			}
			if got := s["Install"]["WantedBy"]; !slices.Equal(got, []string{"multi-user.target"}) {
				t.Errorf("[Install] WantedBy: got %q, want [multi-user.target]", got)
			}
			if len(svc["ExecStart"]) != 1 {
				t.Fatalf("ExecStart: got %q, want exactly one", svc["ExecStart"])
			}
			for _, part := range execStart[name] {
				if !strings.Contains(svc["ExecStart"][0], part) {
					t.Errorf("ExecStart %q: want it to contain %q", svc["ExecStart"][0], part)
				}
			}
		})
	}
}

func TestInstallAgentScriptLint(t *testing.T) {
	script := filepath.Join(repoRoot(t), "deploy", "systemd", "install-agent.sh")
	scripts := []string{script, filepath.Join(repoRoot(t), "deploy", "render.sh"), filepath.Join(repoRoot(t), "hack", "helm", "build.sh")}
	for _, s := range scripts {
		if out, err := exec.Command("bash", "-n", s).CombinedOutput(); err != nil {
			t.Errorf("bash -n %s: %v\n%s", s, err, out)
		}
	}
	sc := lookTool(t, "shellcheck", "shellcheck")
	for _, s := range scripts {
		if out, err := exec.Command(sc, "--severity=style", s).CombinedOutput(); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", s, err, out)
		}
	}
}

// installRun runs install-agent.sh with every path under root and systemctl
// replaced by a stub that appends its arguments to root/systemctl.log.
type installRun struct {
	t      *testing.T
	script string
	root   string
	env    []string // more environment, e.g. CURL_CA_BUNDLE
}

func newInstallRun(t *testing.T) *installRun {
	root := t.TempDir()
	stub := filepath.Join(root, "systemctl")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\necho \"$*\" >>\""+root+"/systemctl.log\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &installRun{t: t, script: filepath.Join(repoRoot(t), "deploy", "systemd", "install-agent.sh"), root: root}
}

// run returns the exit code and combined output; prefix (e.g. setpriv) runs
// the script as another user.
func (r *installRun) run(prefix []string, args ...string) (int, string) {
	r.t.Helper()
	argv := append(append(slices.Clone(prefix), "bash", r.script), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "EDGEWIRE_INSTALL_ROOT="+r.root, "EDGEWIRE_SYSTEMCTL="+filepath.Join(r.root, "systemctl"), "EDGEWIRE_TOKEN=")
	// Downloads go to the test's loopback servers, never through a proxy.
	cmd.Env = append(cmd.Env, "http_proxy=", "https_proxy=", "HTTPS_PROXY=", "all_proxy=", "ALL_PROXY=", "no_proxy=*", "NO_PROXY=*")
	cmd.Env = append(cmd.Env, r.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String()
	}
	if err != nil {
		r.t.Fatalf("run %s: %v", r.script, err)
	}
	return 0, out.String()
}

// systemctl returns the stub's calls since the last call of systemctl.
func (r *installRun) systemctl() []string {
	r.t.Helper()
	p := filepath.Join(r.root, "systemctl.log")
	b, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		r.t.Fatal(err)
	}
	os.Remove(p)
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// read returns the file at rel under the staging root.
func (r *installRun) read(rel string) string {
	r.t.Helper()
	b, err := os.ReadFile(filepath.Join(r.root, rel))
	if err != nil {
		r.t.Fatal(err)
	}
	return string(b)
}

// exists reports whether rel exists under the staging root.
func (r *installRun) exists(rel string) bool {
	r.t.Helper()
	_, err := os.Stat(filepath.Join(r.root, rel))
	if err != nil && !os.IsNotExist(err) {
		r.t.Fatal(err)
	}
	return err == nil
}

// write puts a file at rel under the staging root, as an earlier install
// or the agent would have.
func (r *installRun) write(rel, content string, mode os.FileMode) {
	r.t.Helper()
	p := filepath.Join(r.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		r.t.Fatal(err)
	}
}

// enrol does what the agent does on joining: saves its enrolment in the
// state dir and deletes the join token file.
func (r *installRun) enrol() {
	r.t.Helper()
	r.write("var/lib/edgewire/agent/enrolment.json", "{}", 0o600)
	if err := os.Remove(filepath.Join(r.root, "etc/edgewire/join-token")); err != nil && !os.IsNotExist(err) {
		r.t.Fatal(err)
	}
}

func TestInstallAgentScript(t *testing.T) {
	const token = "ewt1.abc123.c2VjcmV0.cGlu"
	fakeBin := filepath.Join(t.TempDir(), "edgewire-agent")
	elf, err := os.ReadFile("/bin/true") // any ELF executable
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fakeBin, elf, 0o644); err != nil {
		t.Fatal(err)
	}

	bad := []struct {
		name string
		args []string
		want string
	}{
		{"no coordinator", []string{"--token", token}, "--coordinator HOST:PORT is required"},
		{"coordinator without port", []string{"--coordinator", "coord.example.com"}, "want HOST:PORT"},
		{"bad token", []string{"--coordinator", "c:8443", "--token", "hunter2"}, "must look like ewt1."},
		{"binary and url", []string{"--coordinator", "c:8443", "--binary", fakeBin, "--url", "https://x/y"}, "not both"},
		{"missing binary", []string{"--coordinator", "c:8443", "--binary", "/nonexistent/agent"}, "no such file"},
		{"bad sha256", []string{"--coordinator", "c:8443", "--binary", fakeBin, "--sha256", "xyz"}, "64 hex digits"},
		{"bad name", []string{"--coordinator", "c:8443", "--name", "Bad_Name"}, "--name Bad_Name"},
		{"quote in agent args", []string{"--coordinator", "c:8443", "--agent-args", `--x "y"`}, "--agent-args may hold only"},
		{"unknown flag", []string{"--coordinator", "c:8443", "--frobnicate"}, "unknown argument: --frobnicate"},
		{"flag without value", []string{"--coordinator"}, "--coordinator needs a value"},
		// Loopback URLs with a closed port: a script that did not refuse
		// them still sends nothing off this host.
		{"https download without sha256", []string{"--coordinator", "c:8443", "--token", token, "--url", "https://127.0.0.1:1/edgewire-agent"}, "--url needs --sha256"},
		{"http download without sha256", []string{"--coordinator", "c:8443", "--token", token, "--url", "http://127.0.0.1:1/edgewire-agent"}, "--url needs --sha256"},
		{"token in agent args", []string{"--coordinator", "c:8443", "--agent-args", "--name x --token " + token}, "not among the agent's flags"},
		{"token file in agent args", []string{"--coordinator", "c:8443", "--agent-args", "--token-file=/root/token"}, "not among the agent's flags"},
	}
	for _, tc := range bad {
		t.Run("refuses/"+tc.name, func(t *testing.T) {
			r := newInstallRun(t)
			code, out := r.run(nil, tc.args...)
			if code != 2 || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, output %q; want exit 2 and %q", code, out, tc.want)
			}
			if calls := r.systemctl(); len(calls) > 0 {
				t.Errorf("systemctl calls: got %q, want none", calls)
			}
		})
	}

	if os.Geteuid() != 0 {
		unavailable(t, "the install script's runs need root (they stage into a temp dir, but the script checks for root)")
	}

	t.Run("refuses/not root", func(t *testing.T) {
		setpriv := lookTool(t, "setpriv", "util-linux")
		r := newInstallRun(t)
		if err := os.Chmod(r.root, 0o755); err != nil {
			t.Fatal(err)
		}
		code, out := r.run([]string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"},
			"--coordinator", "c:8443", "--token", token, "--binary", "/bin/true")
		if code != 1 || !strings.Contains(out, "must run as root") {
			t.Errorf("exit %d, output %q; want exit 1 and %q", code, out, "must run as root")
		}
	})

	t.Run("installs idempotently", func(t *testing.T) {
		r := newInstallRun(t)
		args := []string{"--coordinator", "coord.example.com:8443", "--token", token, "--binary", fakeBin,
			"--name", "edge-01", "--agent-args", "--advertise-routes 10.42.3.0/24"}
		code, out := r.run(nil, args...)
		if code != 0 {
			t.Fatalf("first run: exit %d, want 0:\n%s", code, out)
		}
		if got, want := r.systemctl(), []string{"daemon-reload", "enable edgewire-agent.service", "restart edgewire-agent.service"}; !slices.Equal(got, want) {
			t.Errorf("first run systemctl calls: got %q, want %q", got, want)
		}
		files := []struct {
			path string
			mode os.FileMode
		}{
			{"usr/local/bin/edgewire-agent", 0o755},
			{"etc/edgewire/agent.env", 0o600},
			{"etc/edgewire/join-token", 0o600},
			{"etc/systemd/system/edgewire-agent.service", 0o644},
		}
		for _, f := range files {
			st, err := os.Stat(filepath.Join(r.root, f.path))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != f.mode {
				t.Errorf("%s: got mode %v, want %v", f.path, st.Mode().Perm(), f.mode)
			}
		}
		env := r.read("etc/edgewire/agent.env")
		for _, want := range []string{
			"EDGEWIRE_COORDINATOR=coord.example.com:8443\n",
			`EDGEWIRE_AGENT_ARGS="--name edge-01 --token-file /etc/edgewire/join-token --advertise-routes 10.42.3.0/24"` + "\n",
		} {
			if !strings.Contains(env, want) {
				t.Errorf("agent.env:\n%s\nwant it to contain %q", env, want)
			}
		}
		if strings.Contains(env, token) || strings.Contains(env, "EDGEWIRE_TOKEN") {
			t.Errorf("agent.env:\n%s\nwant no join token in it", env)
		}
		if got := r.read("etc/edgewire/join-token"); got != token+"\n" {
			t.Errorf("join-token: got %q, want %q", got, token+"\n")
		}
		unit, err := os.ReadFile(filepath.Join(r.root, "etc/systemd/system/edgewire-agent.service"))
		if err != nil {
			t.Fatal(err)
		}
		if string(unit) != readDeploy(t, "systemd/edgewire-agent.service") {
			t.Error("installed unit differs from deploy/systemd/edgewire-agent.service")
		}

		// Again with the same arguments: nothing changes, no restart.
		code, out = r.run(nil, args...)
		if code != 0 {
			t.Fatalf("second run: exit %d, want 0:\n%s", code, out)
		}
		if strings.Contains(out, "installed ") {
			t.Errorf("second run output %q: want no file installed", out)
		}
		if got, want := r.systemctl(), []string{"daemon-reload", "enable edgewire-agent.service", "start edgewire-agent.service"}; !slices.Equal(got, want) {
			t.Errorf("second run systemctl calls: got %q, want %q", got, want)
		}

		// Without --token and --binary: the token file the agent has not
		// used yet and the installed binary are kept.
		rest := []string{"--coordinator", "coord.example.com:8443", "--name", "edge-01", "--agent-args", "--advertise-routes 10.42.3.0/24"}
		code, out = r.run(nil, rest...)
		if code != 0 {
			t.Fatalf("third run: exit %d, want 0:\n%s", code, out)
		}
		if strings.Contains(out, "installed ") {
			t.Errorf("third run output %q: want no file installed", out)
		}
		if got := r.read("etc/edgewire/agent.env"); got != env {
			t.Errorf("agent.env after a run without --token:\n%s\nwant unchanged:\n%s", got, env)
		}
		if got := r.read("etc/edgewire/join-token"); got != token+"\n" {
			t.Errorf("join-token after a run without --token: got %q, want %q", got, token+"\n")
		}
		r.systemctl()

		// The agent enrols and deletes the token file (as edgewire-agent
		// --token-file does): a run without --token leaves it gone and
		// stops passing --token-file.
		r.enrol()
		code, out = r.run(nil, rest...)
		if code != 0 {
			t.Fatalf("run after enrolment: exit %d, want 0:\n%s", code, out)
		}
		if r.exists("etc/edgewire/join-token") {
			t.Error("join-token after enrolment: exists, want it left deleted")
		}
		if got, want := r.read("etc/edgewire/agent.env"), `EDGEWIRE_AGENT_ARGS="--name edge-01 --advertise-routes 10.42.3.0/24"`+"\n"; !strings.Contains(got, want) {
			t.Errorf("agent.env after enrolment:\n%s\nwant it to contain %q", got, want)
		}
		if got, want := r.systemctl(), []string{"daemon-reload", "enable edgewire-agent.service", "restart edgewire-agent.service"}; !slices.Equal(got, want) {
			t.Errorf("run after enrolment: systemctl calls: got %q, want %q (agent.env changed)", got, want)
		}
	})

	t.Run("keeps what it is not told to change", func(t *testing.T) {
		r := newInstallRun(t)
		code, out := r.run(nil, "--coordinator", "coord.example.com:8443", "--token", token, "--binary", fakeBin,
			"--name", "edge-01", "--agent-args", "--advertise-routes 10.42.3.0/24 --relay-region 2")
		if code != 0 {
			t.Fatalf("first run: exit %d:\n%s", code, out)
		}
		r.enrol()
		steps := []struct {
			what string
			args []string
			want string // agent.env's two settings
		}{
			{"a new binary only", []string{"--binary", fakeBin},
				"EDGEWIRE_COORDINATOR=coord.example.com:8443\nEDGEWIRE_AGENT_ARGS=\"--name edge-01 --advertise-routes 10.42.3.0/24 --relay-region 2\""},
			{"another coordinator", []string{"--coordinator", "coord2.example.com:8443"},
				"EDGEWIRE_COORDINATOR=coord2.example.com:8443\nEDGEWIRE_AGENT_ARGS=\"--name edge-01 --advertise-routes 10.42.3.0/24 --relay-region 2\""},
			{"another name", []string{"--name", "edge-02"},
				"EDGEWIRE_COORDINATOR=coord2.example.com:8443\nEDGEWIRE_AGENT_ARGS=\"--name edge-02 --advertise-routes 10.42.3.0/24 --relay-region 2\""},
			{"other flags", []string{"--agent-args", "--advertise-routes 10.42.4.0/24"},
				"EDGEWIRE_COORDINATOR=coord2.example.com:8443\nEDGEWIRE_AGENT_ARGS=\"--name edge-02 --advertise-routes 10.42.4.0/24\""},
			{"flags cleared", []string{"--agent-args", ""},
				"EDGEWIRE_COORDINATOR=coord2.example.com:8443\nEDGEWIRE_AGENT_ARGS=\"--name edge-02\""},
		}
		for _, st := range steps {
			code, out := r.run(nil, st.args...)
			if code != 0 {
				t.Fatalf("%s: exit %d:\n%s", st.what, code, out)
			}
			if got := r.read("etc/edgewire/agent.env"); !strings.Contains(got, st.want+"\n") {
				t.Errorf("%s: agent.env:\n%s\nwant:\n%s", st.what, got, st.want)
			}
			r.systemctl()
		}
	})

	// Installs before the token file kept the token in agent.env.
	const oldEnv = "EDGEWIRE_COORDINATOR=c:8443\nEDGEWIRE_TOKEN=" + token + "\nEDGEWIRE_AGENT_ARGS=\"\"\n"
	t.Run("moves the token out of an old agent.env", func(t *testing.T) {
		r := newInstallRun(t)
		r.write("etc/edgewire/agent.env", oldEnv, 0o600)
		code, out := r.run(nil, "--coordinator", "c:8443", "--binary", fakeBin)
		if code != 0 {
			t.Fatalf("exit %d, want 0:\n%s", code, out)
		}
		if got := r.read("etc/edgewire/join-token"); got != token+"\n" {
			t.Errorf("join-token: got %q, want %q", got, token+"\n")
		}
		env := r.read("etc/edgewire/agent.env")
		if strings.Contains(env, token) || !strings.Contains(env, `EDGEWIRE_AGENT_ARGS="--token-file /etc/edgewire/join-token"`) {
			t.Errorf("agent.env:\n%s\nwant no token and --token-file in the agent args", env)
		}
	})
	t.Run("drops an old agent.env's token once the node joined", func(t *testing.T) {
		r := newInstallRun(t)
		r.write("etc/edgewire/agent.env", oldEnv, 0o600)
		r.enrol()
		code, out := r.run(nil, "--coordinator", "c:8443", "--binary", fakeBin)
		if code != 0 {
			t.Fatalf("exit %d, want 0:\n%s", code, out)
		}
		if r.exists("etc/edgewire/join-token") {
			t.Error("join-token: exists, want none for a node that joined")
		}
		if env := r.read("etc/edgewire/agent.env"); strings.Contains(env, token) || strings.Contains(env, "--token-file") {
			t.Errorf("agent.env:\n%s\nwant neither the token nor --token-file", env)
		}
	})

	t.Run("downloads only what matches --sha256", func(t *testing.T) {
		elfSum := fmt.Sprintf("%x", sha256.Sum256(elf))
		serve := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(elf) })
		plain := httptest.NewServer(serve)
		defer plain.Close()
		tlsSrv := httptest.NewTLSServer(serve)
		defer tlsSrv.Close()
		ca := filepath.Join(t.TempDir(), "ca.pem")
		if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, url, sum string
			ok             bool
		}{
			{"http, right sum", plain.URL + "/edgewire-agent", elfSum, true},
			{"https, right sum", tlsSrv.URL + "/edgewire-agent", elfSum, true},
			{"https, upper-case sum", tlsSrv.URL + "/edgewire-agent", strings.ToUpper(elfSum), true},
			{"http, wrong sum", plain.URL + "/edgewire-agent", strings.Repeat("0", 64), false},
			{"https, wrong sum", tlsSrv.URL + "/edgewire-agent", strings.Repeat("ab", 32), false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := newInstallRun(t)
				r.env = []string{"CURL_CA_BUNDLE=" + ca, "SSL_CERT_FILE=" + ca}
				code, out := r.run(nil, "--coordinator", "c:8443", "--token", token, "--url", tc.url, "--sha256", tc.sum)
				if !tc.ok {
					if code != 1 || !strings.Contains(out, "SHA-256 of") {
						t.Errorf("exit %d, output %q; want exit 1 and %q", code, out, "SHA-256 of")
					}
					if r.exists("usr/local/bin/edgewire-agent") {
						t.Error("a binary with the wrong checksum was installed")
					}
					if calls := r.systemctl(); len(calls) > 0 {
						t.Errorf("systemctl calls: got %q, want none", calls)
					}
					return
				}
				if code != 0 {
					t.Fatalf("exit %d, want 0:\n%s", code, out)
				}
				if got := r.read("usr/local/bin/edgewire-agent"); got != string(elf) {
					t.Errorf("installed binary: got %d bytes, want the %d served", len(got), len(elf))
				}
			})
		}
	})

	t.Run("refuses/no token before join", func(t *testing.T) {
		r := newInstallRun(t)
		code, out := r.run(nil, "--coordinator", "c:8443", "--binary", fakeBin)
		if code != 2 || !strings.Contains(out, "has not joined yet") {
			t.Errorf("exit %d, output %q; want exit 2 and %q", code, out, "has not joined yet")
		}
	})
}

// TestInstallAgentArgsExist checks the flags install-agent.sh itself puts
// into EDGEWIRE_AGENT_ARGS (--name, --token-file) against the real agent's
// `run --help`, as TestDeployedFlagsExist does for the units' ExecStart.
func TestInstallAgentArgsExist(t *testing.T) {
	if os.Geteuid() != 0 {
		unavailable(t, "the install script's runs need root (they stage into a temp dir, but the script checks for root)")
	}
	r := newInstallRun(t)
	code, out := r.run(nil, "--coordinator", "c:8443", "--token", "ewt1.abc123.c2VjcmV0.cGlu", "--binary", "/bin/true", "--name", "edge-01", "--no-start")
	if code != 0 {
		t.Fatalf("install: exit %d, want 0:\n%s", code, out)
	}
	var args []string
	for _, line := range strings.Split(r.read("etc/edgewire/agent.env"), "\n") {
		if v, ok := strings.CutPrefix(line, "EDGEWIRE_AGENT_ARGS="); ok {
			args = flagRE.FindAllString(v, -1)
		}
	}
	if !slices.Contains(args, "--token-file") || !slices.Contains(args, "--name") {
		t.Fatalf("agent.env agent args: got flags %q, want --name and --token-file among them", args)
	}

	help, err := exec.Command(filepath.Join(binaries(t), "edgewire-agent"), "run", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("edgewire-agent run --help: %v\n%s", err, help)
	}
	accepted := flagRE.FindAllString(string(help), -1)
	for _, f := range args {
		if !slices.Contains(accepted, f) {
			t.Errorf("install-agent.sh passes edgewire-agent run %s, which `edgewire-agent run --help` does not list", f)
		}
	}
}

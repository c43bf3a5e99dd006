package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

var flagRE = regexp.MustCompile(`--[a-z0-9][a-z0-9-]*`)

// binaries returns the directory holding edgewire-agent, -coordinator and
// -relay: $EDGEWIRE_BIN (make e2e sets it) when it has all three, else a
// fresh go build of them.
func binaries(t *testing.T) string {
	t.Helper()
	names := []string{"edgewire-agent", "edgewire-coordinator", "edgewire-relay"}
	if dir := os.Getenv("EDGEWIRE_BIN"); dir != "" {
		complete := true
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				complete = false
			}
		}
		if complete {
			return dir
		}
	}
	dir := t.TempDir()
	args := []string{"build", "-o", dir + "/"}
	for _, n := range names {
		args = append(args, "./cmd/"+n)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		unavailable(t, "go build the daemons: %v\n%s", err, out)
	}
	return dir
}

// TestDeployedFlagsExist checks every flag the systemd units and the
// chart's containers pass against the real binaries' --help, so renaming a
// flag cannot leave a deployment that crashes at start.
func TestDeployedFlagsExist(t *testing.T) {
	bin := binaries(t)
	help := map[string][]string{} // binary -> flags it accepts
	for name, args := range map[string][]string{
		"edgewire-agent":       {"run", "--help"},
		"edgewire-coordinator": {"--help"},
		"edgewire-relay":       {"--help"},
	} {
		out, err := exec.Command(filepath.Join(bin, name), args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		help[name] = flagRE.FindAllString(string(out), -1)
	}

	// used: binary -> flag -> where it is passed.
	used := map[string]map[string]string{}
	use := func(binary, where string, args []string) {
		if used[binary] == nil {
			used[binary] = map[string]string{}
		}
		for _, a := range args {
			if strings.HasPrefix(a, "--") {
				used[binary][flagRE.FindString(a)] = where
			}
		}
	}
	for _, u := range units {
		s := unitSettings(t, readDeploy(t, "systemd/"+u))
		for _, line := range s["Service"]["ExecStart"] {
			f := strings.Fields(line)
			use(filepath.Base(f[0]), u, f[1:])
		}
	}
	h := tools(t)
	for name, values := range map[string]map[string]any{"chart defaults": nil, "chart edited values": editedValues()} {
		for _, o := range h.render(t, values) {
			if o.kind() != "Deployment" && o.kind() != "DaemonSet" {
				continue
			}
			for _, c := range o.list("spec", "template", "spec", "containers") {
				cmd := strs(sub(c).list("command"))
				if len(cmd) == 0 {
					t.Errorf("%s (%s): container without command", o, name)
					continue
				}
				use(filepath.Base(cmd[0]), name+" "+o.String(), strs(sub(c).list("args")))
			}
		}
	}
	for binary, flags := range used {
		accepted, ok := help[binary]
		if !ok {
			t.Errorf("deployments run %s, which is not among the checked binaries", binary)
			continue
		}
		for f, where := range flags {
			if !slices.Contains(accepted, f) {
				t.Errorf("%s passes %s %s, which `%s --help` does not list", where, binary, f, binary)
			}
		}
	}
}

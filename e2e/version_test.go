package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/internal/buildinfo"
)

// TestVersion: every binary the Makefile built (EDGEWIRE_BIN) says
// which build it is: the version it stamped, not "dev", and the
// checkout's commit.
func TestVersion(t *testing.T) {
	if os.Getenv("EDGEWIRE_BIN") == "" {
		t.Skip("binaries not built by the Makefile (EDGEWIRE_BIN unset): nothing stamped")
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not in a git checkout: %v", err)
	}
	for _, name := range []string{"edgewire-agent", "edgewire-coordinator", "edgewire-relay", "edgewire"} {
		t.Run(name, func(t *testing.T) {
			bin := cluster.Bin(t, name)
			out, err := exec.Command(bin, "version", "-o", "json").Output()
			if err != nil {
				t.Fatalf("%s version -o json: %v", name, err)
			}
			var in buildinfo.Info
			if err := json.Unmarshal(out, &in); err != nil {
				t.Fatalf("%s version -o json: %v\n%s", name, err, out)
			}
			if in.Revision != strings.TrimSpace(string(head)) {
				t.Errorf("revision %q, want the checkout's %s", in.Revision, head)
			}
			if in.Version == "dev" {
				t.Error(`version "dev": the Makefile did not stamp one`)
			}
			line, err := exec.Command(bin, "--version").Output()
			if err != nil || !strings.HasPrefix(string(line), name+" "+in.Version+" (commit ") {
				t.Errorf("%s --version: %q (%v), want %q...", name, line, err, name+" "+in.Version+" (commit ")
			}
		})
	}
}

// TestSecretsNotEchoed: a join token in the environment never shows in
// the agent's help (it is the --token default when the command runs, not
// in the flag's definition).
func TestSecretsNotEchoed(t *testing.T) {
	const secret = "ewt1.0123456789abcdef.fedcba9876543210fedcba9876543210.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	for _, args := range [][]string{{"run", "--help"}, {"join", "--help"}, {"--help"}} {
		cmd := exec.Command(cluster.Bin(t, "edgewire-agent"), args...)
		cmd.Env = append(os.Environ(), "EDGEWIRE_TOKEN="+secret)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("edgewire-agent %v: %v\n%s", args, err, out)
		}
		if strings.Contains(string(out), "0123456789abcdef") || !strings.Contains(string(out), "--token") && len(args) > 1 {
			t.Errorf("edgewire-agent %v printed the token, or no --token flag:\n%s", args, out)
		}
	}
}

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

package layering

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/edgewire/edgewire/"

// deps lists the module's own packages that the packages matching
// patterns depend on (without tests).
func deps(t *testing.T, patterns ...string) []string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list", "-deps", "-f", "{{.ImportPath}}"}, patterns...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

func TestLayers(t *testing.T) {
	for _, tc := range []struct {
		from      []string
		forbidden []string // prefixes of import paths (module paths or external)
	}{
		{[]string{module + "node/..."}, []string{module + "coordinator"}},
		{[]string{module + "coordinator/..."}, []string{module + "node/"}},
		{[]string{module + "api", module + "types/...", module + "internal/..."}, []string{module + "node/", module + "coordinator", module + "dataplane/", module + "cmd/"}},
		{[]string{module + "cmd/edgewire", module + "cmd/edgewire-agent"}, []string{"go.etcd.io/bbolt", module + "coordinator"}},
		{[]string{module + "cmd/edgewire"}, []string{"github.com/pion/", module + "dataplane/"}},
	} {
		for _, d := range deps(t, tc.from...) {
			for _, f := range tc.forbidden {
				if strings.HasPrefix(d, f) {
					t.Errorf("%v depends on %s (nothing under %s may be imported there)", tc.from, d, f)
				}
			}
		}
	}
}

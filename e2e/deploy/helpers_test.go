package deploy

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// ci reports whether every prerequisite must be present (CI=true): a
// missing tool is then a failure, not a skip.
func ci() bool { return os.Getenv("CI") == "true" }

// unavailable fails the test under CI=true and skips it elsewhere.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if ci() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// lookTool returns the path of a command on PATH, or fails or skips the
// test (see unavailable) naming the Debian package that provides it.
func lookTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		unavailable(t, "%s not found (Debian package %s; hack/install-deps.sh installs it): %v", name, pkg, err)
	}
	return p
}

// repoRoot walks up from the package directory to the directory holding go.mod.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal(errors.New("go.mod not found above the working directory"))
		}
		dir = parent
	}
}

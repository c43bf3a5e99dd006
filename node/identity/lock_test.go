package identity

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// One holder at a time; the second is told who holds it; a closed lock
// can be taken again. (flock locks belong to open files, so a second
// open in this process stands for a second agent.)
func TestLockStateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	l, err := LockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v, %v; want created 0700", fi, err)
	}
	_, err = LockStateDir(dir)
	if !errors.Is(err, ErrStateDirInUse) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second lock: %v; want ErrStateDirInUse naming pid %d", err, os.Getpid())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, err := LockStateDir(dir)
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	l2.Close()
	// A file left by a dead agent (its pid inside, no lock held) is no
	// obstacle.
	if err := os.WriteFile(filepath.Join(dir, lockFile), []byte("999999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l3, err := LockStateDir(dir)
	if err != nil {
		t.Fatalf("with a stale lock file: %v", err)
	}
	l3.Close()
}

package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/edgewire/edgewire/node/identity"
	"github.com/edgewire/edgewire/node/svcproxy"
)

// A second agent on a state dir in use stops before anything else: no
// join is tried (the coordinator here does not exist; a join would
// retry until the deadline), no token spent.
func TestSecondAgentOnStateDir(t *testing.T) {
	dir := t.TempDir()
	held, err := identity.LockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	err = Run(ctx, Config{StateDir: dir, Interface: "ewlocktest", Coordinator: "127.0.0.1:1", Token: "x", Services: svcproxy.ModeOff})
	if !errors.Is(err, identity.ErrStateDirInUse) {
		t.Fatalf("Run: %v, want ErrStateDirInUse", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Run took %v to refuse", d)
	}
}

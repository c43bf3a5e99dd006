// Package leaktest checks, in tests, that no goroutine a piece of code
// started outlives it: the promise of every Run(ctx) error in edgewire
// (go.uber.org/goleak is not a dependency of the module). It compares
// goroutine IDs against a snapshot, so goroutines that were running
// before, in other tests or in the testing package, never count.
package leaktest

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Snapshot is the set of goroutines running when it was taken.
type Snapshot struct {
	ids map[uint64]bool
}

// Take records the goroutines running now.
func Take() Snapshot {
	s := Snapshot{ids: map[uint64]bool{}}
	for _, g := range stacks() {
		s.ids[g.id] = true
	}
	return s
}

// Leaked waits up to grace for every goroutine started since s to end
// (servers close connections asynchronously, timers fire late) and
// returns the stacks of those still running, or "" when there are none.
// It polls, so a clean run costs one pass.
func (s Snapshot) Leaked(grace time.Duration) string {
	deadline := time.Now().Add(grace)
	for {
		var left []string
		for _, g := range stacks() {
			if !s.ids[g.id] && !ignored(g.stack) {
				left = append(left, g.stack)
			}
		}
		if len(left) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("%d goroutines left:\n\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ignored reports the test runner's own goroutines (a test or subtest
// started after the snapshot), which are not the code under test's to stop.
func ignored(stack string) bool {
	return strings.Contains(stack, "testing.tRunner(")
}

type goroutine struct {
	id    uint64
	stack string
}

// stacks returns every user goroutine but the caller's.
func stacks() []goroutine {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []goroutine
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 { // the caller, always first
			continue
		}
		// "goroutine 17 [chan receive]:"
		rest, ok := strings.CutPrefix(g, "goroutine ")
		if !ok {
			continue
		}
		idText, _, _ := strings.Cut(rest, " ")
		id, err := strconv.ParseUint(idText, 10, 64)
		if err != nil {
			continue
		}
		out = append(out, goroutine{id: id, stack: g})
	}
	return out
}

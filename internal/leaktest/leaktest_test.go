package leaktest

import (
	"strings"
	"testing"
	"time"
)

// TestLeaked: a goroutine started after the snapshot counts until it
// ends; one running before it never does.
func TestLeaked(t *testing.T) {
	old := make(chan struct{})
	go func() { <-old }()
	defer close(old)

	s := Take()
	release := make(chan struct{})
	go blockedUntil(release)
	if l := s.Leaked(50 * time.Millisecond); !strings.Contains(l, "leaktest.blockedUntil") || !strings.HasPrefix(l, "1 goroutines left") {
		t.Fatalf("with one goroutine running: got %q, want it reported alone", l)
	}
	close(release)
	if l := s.Leaked(5 * time.Second); l != "" {
		t.Fatalf("after it ended: got %q, want none", l)
	}
}

func blockedUntil(c chan struct{}) { <-c }

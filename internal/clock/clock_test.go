package clock

import (
	"testing"
	"time"
)

func TestFake(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	f := NewFake(t0)
	a := f.NewTimer(time.Second)
	fired := make(chan time.Time, 1)
	f.AfterFunc(3*time.Second, func() { fired <- f.Now() })
	stopped := f.NewTimer(2 * time.Second)
	if !stopped.Stop() || stopped.Stop() {
		t.Error("Stop: want true once, then false")
	}
	if got := f.Timers(); got != 2 {
		t.Fatalf("Timers() = %d, want 2", got)
	}
	f.Advance(999 * time.Millisecond)
	select {
	case <-a.C():
		t.Fatal("timer fired before its deadline")
	default:
	}
	f.Advance(time.Millisecond)
	if got := <-a.C(); !got.Equal(t0.Add(time.Second)) {
		t.Errorf("timer fired at %v, want %v", got, t0.Add(time.Second))
	}
	f.Advance(5 * time.Second)
	select {
	case at := <-fired:
		if !at.After(t0.Add(3*time.Second - time.Nanosecond)) {
			t.Errorf("AfterFunc ran at %v, want at or after %v", at, t0.Add(3*time.Second))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc did not run")
	}
	if !f.Now().Equal(t0.Add(6 * time.Second)) {
		t.Errorf("Now() = %v, want %v", f.Now(), t0.Add(6*time.Second))
	}
	// Reset of a fired timer re-arms it from now.
	if a.Reset(time.Second) {
		t.Error("Reset of a fired timer: want false")
	}
	f.Advance(time.Second)
	if got := <-a.C(); !got.Equal(t0.Add(7 * time.Second)) {
		t.Errorf("re-armed timer fired at %v, want %v", got, t0.Add(7*time.Second))
	}
	if Or(nil) == nil || Or(f) != Clock(f) {
		t.Error("Or: want Real for nil, the clock otherwise")
	}
}

// TestFakeAsTimeTimer: the Fake keeps time.Timer's promises that code
// relies on: a timer due now fires at once without moving the clock, and
// after Stop or Reset no value from the earlier setting is received.
func TestFakeAsTimeTimer(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	f := NewFake(t0)
	f.Advance(time.Second)
	now := t0.Add(time.Second)

	zero := f.NewTimer(0)
	select {
	case at := <-zero.C():
		if !at.Equal(now) {
			t.Errorf("NewTimer(0) fired at %v, want %v", at, now)
		}
	default:
		t.Error("NewTimer(0) did not fire at once")
	}
	neg := f.NewTimer(time.Minute)
	if !neg.Reset(-time.Second) {
		t.Error("Reset of an armed timer: want true")
	}
	select {
	case <-neg.C():
	default:
		t.Error("Reset(-1s) did not fire at once")
	}
	ran := make(chan struct{})
	f.AfterFunc(0, func() { close(ran) })
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc(0) did not run")
	}
	if got := f.Timers(); got != 0 {
		t.Errorf("Timers() after timers due now = %d, want 0", got)
	}
	if !f.Now().Equal(now) {
		t.Errorf("Now() = %v, want %v (timers due now must not move the clock)", f.Now(), now)
	}

	// A value sent but not received is dropped by Reset and by Stop.
	stale := f.NewTimer(time.Second)
	f.Advance(time.Second)
	stale.Reset(time.Second)
	select {
	case at := <-stale.C():
		t.Errorf("after Reset, received %v from the earlier setting", at)
	default:
	}
	f.Advance(time.Second)
	stale.Stop()
	select {
	case at := <-stale.C():
		t.Errorf("after Stop, received %v from the earlier setting", at)
	default:
	}
}

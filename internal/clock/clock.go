// Package clock is time as the parts that wait on it see it: the current
// time, and timers. Real is the system clock; Fake is one a test moves by
// hand, so code that waits (backoffs, publication intervals, probes,
// failovers) is tested without sleeping and without flakes.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the time and makes timers. Implementations are safe for
// concurrent use.
type Clock interface {
	Now() time.Time
	// NewTimer is time.NewTimer.
	NewTimer(d time.Duration) Timer
	// AfterFunc is time.AfterFunc: f runs in its own goroutine.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is the part of *time.Timer the code uses. C is nil for timers
// made by AfterFunc.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

// Real is the system clock.
type Real struct{}

var _ Clock = Real{}

func (Real) Now() time.Time { return time.Now() }

func (Real) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

func (Real) AfterFunc(d time.Duration, f func()) Timer { return realTimer{time.AfterFunc(d, f)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time        { return r.t.C }
func (r realTimer) Stop() bool                 { return r.t.Stop() }
func (r realTimer) Reset(d time.Duration) bool { return r.t.Reset(d) }

// Or returns c, or Real if c is nil: the default of every Config.
func Or(c Clock) Clock {
	if c == nil {
		return Real{}
	}
	return c
}

// Fake is a clock that moves only when Advance is called. Timers fire,
// in order of their deadlines, during Advance: channel timers by a
// non-blocking send (buffered, as time.Timer's channel), AfterFunc
// timers by running f in a new goroutine. As with time.Timer, a timer
// set to a duration <= 0 fires at once, and after Stop or Reset its
// channel holds no value from before (Go 1.23 timer semantics, which
// Real has since this module requires a later Go).
type Fake struct {
	mu     sync.Mutex // guards now, timers
	now    time.Time
	timers []*fakeTimer
}

var _ Clock = (*Fake)(nil)

// NewFake returns a fake clock set to start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *Fake) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{f: f, c: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

func (f *Fake) AfterFunc(d time.Duration, fn func()) Timer {
	t := &fakeTimer{f: f, fn: fn}
	t.Reset(d)
	return t
}

// Advance moves the clock by d, firing every timer due by then.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	end := f.now.Add(d)
	for {
		sort.Slice(f.timers, func(i, j int) bool { return f.timers[i].at.Before(f.timers[j].at) })
		if len(f.timers) == 0 || f.timers[0].at.After(end) {
			break
		}
		t := f.timers[0]
		f.timers = f.timers[1:]
		f.now = t.at
		t.fireLocked()
	}
	f.now = end
	f.mu.Unlock()
}

// Timers is the number of timers waiting to fire (tests wait for code to
// have set its timer before advancing).
func (f *Fake) Timers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

type fakeTimer struct {
	f      *Fake
	c      chan time.Time
	fn     func()
	at     time.Time
	active bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	return t.removeLocked()
}

// removeLocked disarms t and drops a value it sent but nobody received,
// and reports whether it was armed. Called with f.mu held.
func (t *fakeTimer) removeLocked() bool {
	if t.c != nil {
		select {
		case <-t.c:
		default:
		}
	}
	if !t.active {
		return false
	}
	t.active = false
	for i, o := range t.f.timers {
		if o == t {
			t.f.timers = append(t.f.timers[:i], t.f.timers[i+1:]...)
			break
		}
	}
	return true
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	was := t.removeLocked()
	t.at = t.f.now.Add(d)
	if d <= 0 {
		// Due now: fire as time.NewTimer(0) does, rather than at the next
		// Advance (which would also move the clock back to t.at).
		t.fireLocked()
		return was
	}
	t.active = true
	t.f.timers = append(t.f.timers, t)
	return was
}

// fireLocked fires t, which is not (or no longer) in f.timers, at the
// clock's current time. Called with f.mu held.
func (t *fakeTimer) fireLocked() {
	t.active = false
	if t.fn != nil {
		go t.fn()
		return
	}
	select {
	case t.c <- t.f.now:
	default:
	}
}

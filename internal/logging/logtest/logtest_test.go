package logtest

import (
	"strings"
	"testing"
	"time"
)

// fakeT records what New's cleanup reports.
type fakeT struct {
	testing.TB
	errs     []string
	cleanups []func()
}

func (f *fakeT) Cleanup(fn func())              { f.cleanups = append(f.cleanups, fn) }
func (f *fakeT) Errorf(format string, a ...any) { f.errs = append(f.errs, format) }
func (f *fakeT) Log(...any)                     {}
func (f *fakeT) Helper()                        {}

func (f *fakeT) end() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name string
		log  func(*fakeT)
		bad  bool
	}{
		{"good lines", func(f *fakeT) {
			New(f).With("src", "x").Info("ok", "took", time.Second, "n", 1)
		}, false},
		{"key twice through With", func(f *fakeT) {
			New(f).With("relay", "fra").Info("connected", "relay", "https://fra")
		}, true},
		{"key twice in one call", func(f *fakeT) {
			New(f).Debug("x", "peer", 1, "peer", 2)
		}, true},
		{"debug lines are checked too", func(f *fakeT) {
			New(f).Debug("x", "listen", struct{ IP string }{"::"})
		}, true},
		{"after the end", func(f *fakeT) {
			l := New(f)
			f.end()
			l.Info("late", "a", 1, "a", 2)
			f.cleanups = nil
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeT{TB: t}
			tc.log(f)
			f.end()
			if got := len(f.errs) > 0; got != tc.bad {
				t.Errorf("reported %q, want bad=%v", f.errs, tc.bad)
			}
			for _, e := range f.errs {
				if !strings.Contains(e, "bad log line") {
					t.Errorf("report %q does not say what is wrong", e)
				}
			}
		})
	}
}

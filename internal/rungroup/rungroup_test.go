package rungroup

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgewire/edgewire/internal/leaktest"
)

const timeout = 5 * time.Second

var (
	errBoom   = errors.New("boom")
	errClose  = errors.New("close failed")
	errNoSync = errors.New("cache did not sync")
)

// untilDone is a well-behaved part: it runs until ctx ends.
func untilDone(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

type part struct {
	name    string
	oneShot bool
	run     func(ctx context.Context) error
}

func TestGroup(t *testing.T) {
	tests := []struct {
		name string
		// setup returns the parts and, if the parent is to be cancelled,
		// a channel that is closed when it is time to.
		setup   func() ([]part, <-chan struct{})
		want    error  // errors.Is target; nil: Wait returns nil
		wantMsg string // Wait's error text
	}{
		{
			name: "parent cancel ends all parts and Wait returns nil",
			setup: func() ([]part, <-chan struct{}) {
				return []part{{"a", false, untilDone}, {"b", false, untilDone}, {"c", false, untilDone}}, closed()
			},
		},
		{
			name: "first error cancels the others",
			setup: func() ([]part, <-chan struct{}) {
				return []part{
					{"a", false, untilDone},
					{"b", false, func(context.Context) error { return errBoom }},
					{"c", false, untilDone},
				}, nil
			},
			want: errBoom, wantMsg: "b: boom",
		},
		{
			name: "a part returning nil while the group runs stops it",
			setup: func() ([]part, <-chan struct{}) {
				return []part{{"a", false, untilDone}, {"server", false, func(context.Context) error { return nil }}}, nil
			},
			want: ErrStopped, wantMsg: "server: stopped unexpectedly",
		},
		{
			name: "a one-shot part returning nil leaves the others running",
			setup: func() ([]part, <-chan struct{}) {
				finished := make(chan struct{})
				stillUp := make(chan struct{})
				return []part{
					{"job", true, func(context.Context) error { close(finished); return nil }},
					{"watcher", false, func(ctx context.Context) error {
						<-finished
						// The group must outlive the job.
						select {
						case <-ctx.Done():
							return errors.New("group stopped with the one-shot part")
						case <-time.After(50 * time.Millisecond):
						}
						close(stillUp)
						<-ctx.Done()
						return nil
					}},
				}, stillUp
			},
		},
		{
			name: "a one-shot part's error stops the group",
			setup: func() ([]part, <-chan struct{}) {
				return []part{{"a", false, untilDone}, {"job", true, func(context.Context) error { return errBoom }}}, nil
			},
			want: errBoom, wantMsg: "job: boom",
		},
		{
			name: "returning the context's error on cancel is a clean stop",
			setup: func() ([]part, <-chan struct{}) {
				return []part{{"a", false, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}}, closed()
			},
		},
		{
			name: "returning the context's error after another part failed is no failure of its own",
			setup: func() ([]part, <-chan struct{}) {
				return []part{
					{"a", false, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }},
					{"b", false, func(context.Context) error { return errBoom }},
				}, nil
			},
			want: errBoom, wantMsg: "b: boom",
		},
		{
			name: "an error in reaction to the parent's cancel is no failure",
			setup: func() ([]part, <-chan struct{}) {
				return []part{
					{"a", false, untilDone},
					{"kubernetes", false, func(ctx context.Context) error { <-ctx.Done(); return errNoSync }},
				}, closed()
			},
		},
		{
			name: "the first failure wins over failures during shutdown",
			setup: func() ([]part, <-chan struct{}) {
				return []part{
					{"a", false, func(context.Context) error { return errBoom }},
					{"b", false, func(ctx context.Context) error { <-ctx.Done(); return errClose }},
				}, nil
			},
			want: errBoom, wantMsg: "a: boom",
		},
		{
			name: "slow parts are waited for",
			setup: func() ([]part, <-chan struct{}) {
				slow := func(ctx context.Context) error {
					<-ctx.Done()
					time.Sleep(30 * time.Millisecond)
					return nil
				}
				return []part{{"a", false, slow}, {"b", false, slow}}, closed()
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := leaktest.Take()
			parent, cancel := context.WithCancel(context.Background())
			defer cancel()
			g, ctx := New(parent)
			parts, cancelWhen := tc.setup()
			var returned atomic.Int32
			for _, p := range parts {
				run := func(ctx context.Context) error {
					defer returned.Add(1)
					return p.run(ctx)
				}
				if p.oneShot {
					g.GoOneShot(p.name, run)
				} else {
					g.Go(p.name, run)
				}
			}
			if cancelWhen != nil {
				select {
				case <-cancelWhen:
				case <-time.After(timeout):
					t.Fatal("parts never got ready to be cancelled")
				}
				cancel()
			}
			err := waitBounded(t, g)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Wait: got %v, want nil", err)
				}
			} else {
				if !errors.Is(err, tc.want) || err.Error() != tc.wantMsg {
					t.Fatalf("Wait: got %v, want %q (wrapping %v)", err, tc.wantMsg, tc.want)
				}
				// The failure stopped the group (not a parent cancel): it
				// is the cause the parts saw.
				if cause := context.Cause(ctx); cancelWhen == nil && !errors.Is(cause, tc.want) {
					t.Errorf("context.Cause: got %v, want %v", cause, tc.want)
				}
			}
			if n := returned.Load(); int(n) != len(parts) {
				t.Errorf("parts returned by the time Wait did: got %d, want %d", n, len(parts))
			}
			if ctx.Err() == nil {
				t.Error("the group's context is alive after Wait, want it ended")
			}
			if l := before.Leaked(timeout); l != "" {
				t.Errorf("goroutines outlived Wait: %s", l)
			}
		})
	}
}

// TestWaitEndsContextOfFinishedGroup: a group of one-shot parts ends its
// context once they are done, releasing whatever waited on it.
func TestWaitEndsContextOfFinishedGroup(t *testing.T) {
	g, ctx := New(context.Background())
	g.GoOneShot("job", func(context.Context) error { return nil })
	if err := waitBounded(t, g); err != nil {
		t.Fatalf("Wait: got %v, want nil", err)
	}
	if ctx.Err() == nil {
		t.Fatal("context alive after Wait, want it ended")
	}
	if cause := context.Cause(ctx); !errors.Is(cause, context.Canceled) {
		t.Fatalf("cause: got %v, want context.Canceled (no failure)", cause)
	}
}

func TestServe(t *testing.T) {
	tests := []struct {
		name       string
		cancel     bool  // end ctx (else serve fails by itself)
		serveErr   error // what serve returns once it ends
		wantErr    error
		wantStops  int32
		serveFirst bool
	}{
		{name: "context ends: stop, then serve's clean return", cancel: true, wantStops: 1},
		{name: "context ends: serve's error after stop is returned", cancel: true, serveErr: errClose, wantErr: errClose, wantStops: 1},
		{name: "serve fails first: its error, and stop still runs once", serveErr: errBoom, wantErr: errBoom, wantStops: 1, serveFirst: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := leaktest.Take()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stopped := make(chan struct{})
			var stops atomic.Int32
			stop := func() {
				if stops.Add(1) == 1 {
					close(stopped)
				}
			}
			serve := func() error {
				if !tc.serveFirst {
					<-stopped
				}
				return tc.serveErr
			}
			done := make(chan error, 1)
			go func() { done <- Serve(ctx, serve, stop) }()
			if tc.cancel {
				cancel()
			}
			select {
			case err := <-done:
				if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
					t.Fatalf("Serve: got %v, want %v", err, tc.wantErr)
				}
			case <-time.After(timeout):
				t.Fatal("Serve did not return")
			}
			if n := stops.Load(); n != tc.wantStops {
				t.Fatalf("stop calls: got %d, want %d", n, tc.wantStops)
			}
			if l := before.Leaked(timeout); l != "" {
				t.Errorf("goroutines outlived Serve: %s", l)
			}
		})
	}
}

func closed() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// waitBounded is g.Wait, failing the test instead of hanging.
func waitBounded(t *testing.T, g *Group) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- g.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		t.Fatal("Wait did not return: a part outlived the group's context")
		return nil
	}
}

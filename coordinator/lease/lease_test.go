package lease_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgewire/edgewire/coordinator/lease"
	"github.com/edgewire/edgewire/internal/kubetest"
)

// replica is one elector with a switch to cut it off the API server and
// a record of its leading.
type replica struct {
	id      string
	cut     kubetest.Cut
	e       *lease.Elector
	leading atomic.Bool
	terms   atomic.Int32 // times lead was called
	stop    context.CancelFunc
	done    chan struct{}
}

const (
	dur   = 2 * time.Second
	renew = 250 * time.Millisecond
)

func start(t *testing.T, api *kubetest.API, ns, id string) *replica {
	t.Helper()
	r := &replica{id: id, done: make(chan struct{})}
	cs, _ := api.Clients(t, r.cut.Wrap)
	var err error
	r.e, err = lease.New(lease.Config{Client: cs, Namespace: ns, Name: "coordinator", Identity: id, Duration: dur, RenewEvery: renew})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	go func() {
		defer close(r.done)
		r.e.Run(ctx, func(ctx context.Context) error {
			r.terms.Add(1)
			r.leading.Store(true)
			<-ctx.Done()
			r.leading.Store(false)
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

// waitFor polls cond every 50 ms for at most d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("after %s: not %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// only asserts that exactly the replicas in want lead.
func only(t *testing.T, all []*replica, want ...*replica) {
	t.Helper()
	for _, r := range all {
		lead := false
		for _, w := range want {
			lead = lead || w == r
		}
		if r.leading.Load() != lead {
			t.Errorf("replica %s leading: %v, want %v", r.id, r.leading.Load(), lead)
		}
	}
}

func TestElection(t *testing.T) {
	api := kubetest.Start(t)
	t.Run("one leader; a clean stop hands over at once", func(t *testing.T) {
		ns := api.Namespace(t)
		a := start(t, api, ns, "a")
		waitFor(t, 5*time.Second, "a leading", a.leading.Load)
		b, c := start(t, api, ns, "b"), start(t, api, ns, "c")
		time.Sleep(2 * dur)
		only(t, []*replica{a, b, c}, a)
		a.stop()
		<-a.done
		took := waitFor(t, 5*time.Second, "b or c leading", func() bool { return b.leading.Load() || c.leading.Load() })
		if took > dur {
			t.Errorf("handover after a clean stop took %s, want under the lease duration %s (the lease is released)", took, dur)
		}
		time.Sleep(renew * 4)
		if b.leading.Load() == c.leading.Load() {
			t.Errorf("b leading %v, c leading %v: want exactly one", b.leading.Load(), c.leading.Load())
		}
	})
	t.Run("leader cut off: keeps leading until it reads another holds the lease", func(t *testing.T) {
		ns := api.Namespace(t)
		a := start(t, api, ns, "a")
		waitFor(t, 5*time.Second, "a leading", a.leading.Load)
		b := start(t, api, ns, "b")
		time.Sleep(renew * 4)
		a.cut.Set(true) // a dead leader, as far as b can tell
		cut := time.Now()
		waitFor(t, 3*dur, "b leading", b.leading.Load)
		if took := time.Since(cut); took < dur {
			t.Errorf("b took over %s after a's last renewal, want at least the lease duration %s", took, dur)
		}
		if !a.leading.Load() || a.e.Status().Unreachable.IsZero() {
			t.Errorf("cut-off leader: leading %v, unreachable since %v; want leading, degraded", a.leading.Load(), a.e.Status().Unreachable)
		}
		a.cut.Set(false)
		waitFor(t, 2*time.Second, "a stepping down", func() bool { return !a.leading.Load() })
		time.Sleep(renew * 4)
		only(t, []*replica{a, b}, b)
	})
	t.Run("API server away for everyone: nobody takes over, the leader stays", func(t *testing.T) {
		ns := api.Namespace(t)
		a := start(t, api, ns, "a")
		waitFor(t, 5*time.Second, "a leading", a.leading.Load)
		b := start(t, api, ns, "b")
		time.Sleep(renew * 4)
		a.cut.Set(true)
		b.cut.Set(true)
		time.Sleep(3 * dur)
		only(t, []*replica{a, b}, a)
		var wg sync.WaitGroup
		for _, r := range []*replica{b, a} { // the standby back first: the worst case
			wg.Go(func() { r.cut.Set(false) })
			time.Sleep(renew / 2)
		}
		wg.Wait()
		time.Sleep(2 * dur)
		only(t, []*replica{a, b}, a)
		if n := a.terms.Load(); n != 1 {
			t.Errorf("a led %d terms, want 1 (no step-down through the outage)", n)
		}
		if s := a.e.Status(); !s.Unreachable.IsZero() || s.Transitions != 0 {
			t.Errorf("after the outage: %+v, want reachable and no transitions", s)
		}
	})
}

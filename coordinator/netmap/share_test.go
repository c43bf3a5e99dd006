package netmap

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/edgewire/edgewire/internal/clock"
)

// timeout bounds waits for what runs in other goroutines (a timer's
// function); the tests' time is the fake clock's.
const timeout = 5 * time.Second

// sameBytes reports whether a and b are the same memory, not just equal.
func sameBytes(a, b []byte) bool {
	return len(a) > 0 && len(a) == len(b) && &a[0] == &b[0]
}

// Streams at the same base share one marshalled update; each gets its own
// self; a stream at another base gets its own update.
func TestUpdatesShared(t *testing.T) {
	r := newRegistry(t, 4)
	subs := map[int]*Sub{}
	for _, i := range []int{1, 2, 3} {
		subs[i] = r.Subscribe(nodeKey(i), nil)
		t.Cleanup(subs[i].Close)
	}
	first := map[int]*Update{}
	for i, s := range subs {
		u, err := s.Next()
		if err != nil || u == nil || !u.Full {
			t.Fatalf("sub %d first Next: got %+v, %v; want a full map", i, u, err)
		}
		first[i] = u
	}
	if !sameBytes(first[1].Shared, first[2].Shared) || !sameBytes(first[1].Shared, first[3].Shared) {
		t.Errorf("full maps at one version: got separate shared bytes, want one copy")
	}
	if slices.Equal(first[1].Head, first[2].Head) || len(first[1].Head) == 0 {
		t.Errorf("full maps: got heads %x and %x, want each stream's own self", first[1].Head, first[2].Head)
	}

	// Node 3 stays behind one change; 1 and 2 follow.
	r.Upsert(node(5))
	for _, i := range []int{1, 2} {
		if _, err := subs[i].Next(); err != nil {
			t.Fatal(err)
		}
	}
	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:4000")}
	if err := r.Connected(nodeKey(2), eps, "", t0); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		sub      int
		wantBase uint64
		wantSelf bool
		wantPeer []string
	}{
		{1, 5, false, []string{"node-00002"}},
		{2, 5, true, []string{"node-00002"}},
		{3, 4, false, []string{"node-00002", "node-00005"}},
	}
	got := map[int]*Update{}
	for _, tt := range tests {
		m, u := decodeNext(t, subs[tt.sub])
		got[tt.sub] = u
		if u.Full || u.Base != tt.wantBase || u.Version != 6 {
			t.Errorf("sub %d: got full=%v %d->%d, want a delta %d->6", tt.sub, u.Full, u.Base, u.Version, tt.wantBase)
		}
		if (m.Self != nil) != tt.wantSelf {
			t.Errorf("sub %d: got self %v, want set=%v", tt.sub, m.Self, tt.wantSelf)
		}
		if n := names(m.Peers); !slices.Equal(n, tt.wantPeer) {
			t.Errorf("sub %d: got peers %v, want %v", tt.sub, n, tt.wantPeer)
		}
	}
	if !sameBytes(got[1].Shared, got[2].Shared) {
		t.Errorf("deltas from one base: got separate shared bytes, want one copy")
	}
	if sameBytes(got[1].Shared, got[3].Shared) {
		t.Errorf("deltas from different bases share bytes, want one each")
	}
}

// decodeNext calls s.Next, wants an update and decodes it.
func decodeNext(t *testing.T, s *Sub) (*apiMap, *Update) {
	t.Helper()
	u, err := s.Next()
	if err != nil || u == nil {
		t.Fatalf("Next: got %+v, %v; want an update", u, err)
	}
	m, err := decode(u)
	if err != nil {
		t.Fatal(err)
	}
	return m, u
}

// With an interval and a burst, changes after a quiet spell are published
// at once up to the burst; beyond it they are held and coalesce into one
// publication per interval; the bucket refills one publication per
// interval up to the burst and no further. The interval grows with the
// number of subscribers. Time moves only when the test moves it.
func TestPublishInterval(t *testing.T) {
	const iv = 100 * time.Millisecond
	// An op makes n changes (n > 0) or moves the clock by wait; then
	// either a publication carries every change made so far (pub), or
	// nothing is published and one publication is scheduled (held), or
	// nothing is published or scheduled.
	type op struct {
		wait time.Duration
		n    int
		pub  bool
		held bool
	}
	var (
		change = func(n int) op { return op{n: n, pub: true} }               // published at once
		hold   = func(n int) op { return op{n: n, held: true} }              // held for later
		after  = func(d time.Duration) op { return op{wait: d, pub: true} }  // the held publication goes out
		before = func(d time.Duration) op { return op{wait: d, held: true} } // still held
	)
	tests := []struct {
		name             string
		interval, perSub time.Duration
		burst            int
		ops              []op
	}{
		{"burst 1: a lone change at once", iv, 0, 1, []op{change(1)}},
		{"burst 1: the next waits an interval and coalesces", iv, 0, 1, []op{
			change(1), hold(3), before(iv - time.Nanosecond), after(time.Nanosecond),
			hold(1), before(iv - time.Nanosecond), after(time.Nanosecond),
		}},
		{"burst 3: three at once, then one per interval", iv, 0, 3, []op{
			change(1), change(1), change(1), hold(2), before(iv - time.Nanosecond), after(time.Nanosecond),
			hold(1), before(iv - time.Nanosecond), after(time.Nanosecond),
		}},
		{"burst 3: one back per interval", iv, 0, 3, []op{
			change(1), change(1), change(1), {wait: 2 * iv}, // two come back
			change(1), change(1), hold(1), before(iv - time.Nanosecond), after(time.Nanosecond),
		}},
		{"burst 2: a long quiet spell refills no more than the burst", iv, 0, 2, []op{
			change(1), {wait: time.Hour}, change(1), change(1), hold(1), before(iv - time.Nanosecond), after(time.Nanosecond),
		}},
		{"burst 2: a stream of changes gets one publication per interval", iv, 0, 2, []op{
			change(1), change(1),
			hold(1), before(iv / 2), hold(1), before(iv/2 - time.Nanosecond), after(time.Nanosecond),
			hold(1), before(iv/2 - time.Nanosecond), hold(1), before(iv / 2), after(time.Nanosecond),
		}},
		{"per subscriber", 0, iv / 2, 2, []op{ // two subscribers: iv
			change(1), change(1), hold(4), before(iv - time.Nanosecond), after(time.Nanosecond),
		}},
		{"no interval: every change at once", 0, 0, 1, []op{change(1), change(1), change(5)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, clk := newFakeRegistry(t, 3)
			r.SetInterval(tt.interval, tt.perSub, tt.burst)
			s := subscribe(t, r, 1)
			subscribe(t, r, 2)
			// The registry's own Upserts were published with no interval
			// set: nothing is paid for.
			changes := 0
			for i, o := range tt.ops {
				clk.Advance(o.wait)
				for range o.n {
					n := node(2)
					n.Hostname = fmt.Sprint(changes)
					changes++
					r.Upsert(n)
				}
				switch {
				case o.pub:
					select {
					case <-s.C():
					case <-time.After(timeout):
						t.Fatalf("op %d (%+v): no publication, want one", i, o)
					}
					if m := next(t, s); m == nil || m.Version != r.Version() {
						t.Fatalf("op %d (%+v): got %v, want an update to version %d", i, o, m, r.Version())
					}
					if n := clk.Timers(); n != 0 {
						t.Fatalf("op %d (%+v): got %d timers after the publication, want none", i, o, n)
					}
				default:
					want := 0
					if o.held {
						want = 1
					}
					if woken, n := signalled(s), clk.Timers(); woken || n != want {
						t.Fatalf("op %d (%+v): got woken %v, %d timers; want no publication, %d timers", i, o, woken, n, want)
					}
				}
			}
		})
	}
}

// A registry that never published has a full bucket: its first burst
// changes go out at once (no timer), the next is held.
func TestPublishFromFresh(t *testing.T) {
	for _, burst := range []int{1, 2, 4} {
		t.Run(fmt.Sprint("burst ", burst), func(t *testing.T) {
			clk := clock.NewFake(t0)
			r := New(prefixes)
			r.SetClock(clk)
			r.SetInterval(time.Hour, 0, burst)
			for i := 1; i <= burst+1; i++ {
				r.Upsert(node(i))
				want := 0
				if i > burst {
					want = 1
				}
				if n := clk.Timers(); n != want {
					t.Fatalf("change %d: got %d timers, want %d (0: published at once)", i, n, want)
				}
			}
		})
	}
}

// An update is the map exactly as it is when the update is built, at the
// registry's version then, even if that is newer than the publication
// that woke the subscriber; its digest is that map's. The publication of
// what it already carried then has nothing for it.
func TestUpdateIsExact(t *testing.T) {
	r, clk := newFakeRegistry(t, 2)
	s := subscribe(t, r, 1)
	r.SetInterval(time.Hour, 0, 1)
	clk.Advance(time.Hour) // the last publication is an interval old
	r.Upsert(node(3))      // published at once
	r.Delete(nodeKey(2))   // held back for an hour
	if !signalled(s) {
		t.Fatal("a change after an idle interval was not published at once")
	}
	m := next(t, s)
	if m.BaseVersion != 2 || m.Version != 4 || len(m.Removed) != 1 || len(m.Peers) != 1 {
		t.Fatalf("got %d->%d, %d peers, removed %d; want 2->4 with node 3 and node 2 removed", m.BaseVersion, m.Version, len(m.Peers), len(m.Removed))
	}
	if !bytes.Equal(m.Digest, r.Digest()) {
		t.Errorf("digest %x, want the registry's %x", m.Digest, r.Digest())
	}
	clk.Advance(time.Hour)
	select {
	case <-s.C():
	case <-time.After(timeout):
		t.Fatal("no publication an hour later")
	}
	if u, err := s.Next(); err != nil || u != nil {
		t.Errorf("after the publication of what it had: %+v, %v; want nothing", u, err)
	}
}

// A delta's Oldest is when its oldest change happened on the registry's
// clock: the fan-out latency is measured from there.
func TestUpdateOldest(t *testing.T) {
	r, clk := newFakeRegistry(t, 2)
	s := subscribe(t, r, 1)
	clk.Advance(time.Second)
	r.Upsert(node(3))
	clk.Advance(time.Second)
	r.Upsert(node(4))
	_, u := decodeNext(t, s)
	if want := t0.Add(time.Second); !u.Oldest.Equal(want) {
		t.Errorf("got Oldest %v, want %v (the first change's time)", u.Oldest, want)
	}
}

package netmap

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
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

// With an interval, a lone change is published at once, a burst after it
// is held for the interval and arrives as one update, and a change right
// after a publication waits a whole interval: at most one publication per
// interval. The interval grows with the number of subscribers. Time moves
// only when the test moves it.
func TestPublishInterval(t *testing.T) {
	const want = 100 * time.Millisecond
	tests := []struct {
		name             string
		interval, perSub time.Duration
		burst            int
		wantV            []uint64 // at once, then one publication per interval
	}{
		{"one change", want, 0, 1, []uint64{4}},
		{"burst coalesces", want, 0, 5, []uint64{4, 8}},
		{"per subscriber", 0, want / 2, 5, []uint64{4, 8}}, // two subscribers
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, clk := newFakeRegistry(t, 3)
			r.SetInterval(tt.interval, tt.perSub)
			clk.Advance(want) // the registry's own Upserts were published an interval ago
			s := subscribe(t, r, 1)
			subscribe(t, r, 2)
			change := func(i int) {
				n := node(2)
				n.Hostname = fmt.Sprint(i)
				r.Upsert(n)
			}
			change(0)
			if !signalled(s) {
				t.Fatal("a change after an idle interval was not published at once")
			}
			got := []uint64{next(t, s).Version}
			for i := 1; i < tt.burst; i++ {
				change(i)
			}
			// released waits an interval less a nanosecond, checks that
			// nothing was published, then moves the last nanosecond and
			// reads the publication.
			released := func(what string) uint64 {
				t.Helper()
				clk.Advance(want - time.Nanosecond)
				if woken, n := signalled(s), clk.Timers(); woken || n != 1 {
					t.Fatalf("%s: published before the interval ended (woken %v, %d timers, want 1)", what, woken, n)
				}
				clk.Advance(time.Nanosecond)
				select {
				case <-s.C():
				case <-time.After(timeout):
					t.Fatalf("%s: no publication once the interval ended", what)
				}
				m := next(t, s)
				if m == nil {
					t.Fatalf("%s: woken with nothing to read", what)
				}
				return m.Version
			}
			if tt.burst > 1 {
				got = append(got, released("burst"))
			}
			if !slices.Equal(got, tt.wantV) {
				t.Errorf("got versions %v, want %v", got, tt.wantV)
			}
			if woken, n := signalled(s), clk.Timers(); woken || n != 0 {
				t.Fatalf("after the burst: woken %v, %d timers; want nothing pending", woken, n)
			}

			last := got[len(got)-1]
			change(tt.burst)
			if v := released("a change right after a publication"); v != last+1 {
				t.Errorf("got version %d, want %d", v, last+1)
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
	r.SetInterval(time.Hour, 0)
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

package agent

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Returning memory after bursts (within 10 s of the last packet: a 2 s
// tick, two quiet ticks, then the trim). While forwarding, wireguard-go grows
// sync.Pools of 64 KiB message buffers (hundreds of MiB under a bulk TCP
// flow). Once the flow ends they are garbage, but the Go runtime frees
// pooled objects only after two GC cycles, and an idle agent allocates so
// little that the next GC is the forced one two minutes later; the
// background scavenger then returns the pages slowly. Control-plane
// bursts (a map with many new peers) leave garbage the same way, and an
// agent's GC goal is high because wireguard-go's long-lived batch buffers
// (32 MiB, mostly never written) count as live heap: up to that much
// written garbage can sit resident until the next GC. The trimmer watches
// the data plane's byte counters and the heap's allocation counter and,
// once a burst of either has been followed by trimQuiet of quiet, runs
// those GCs and returns the free pages to the OS at once. A quiet agent
// holding more than trimFree of free heap pages or garbage also returns
// them, at most once per trimEvery. Garbage counts because an idle agent
// never reaches its GC goal: the batch buffers make the live heap ~45
// MiB, so the goal is tens of MiB above it, and what the agent allocates
// while idle (handshakes, keepalives, ICE, status dumps; ~130 KiB/s with
// 53 peers in the bench) stays resident until the forced GC two minutes
// later. It never runs while traffic flows, so forwarding keeps its warm
// pools.
//
// wireguard-go's receive routines and TUN reader hold batches of 64 KiB
// buffers (128 each) for the device's lifetime, live to the GC: the parts
// a burst wrote would stay resident. Renewing them (rebinding the socket)
// does not help: new 64 KiB buffers placed on reused heap pages are
// zeroed by the allocator, which makes them wholly resident. With the
// data plane bounded, the trim also gives those pages back
// (inflight.Limiter.Trim).
const (
	trimInterval = 2 * time.Second
	trimQuiet    = 2 * trimInterval  // quiet this long after a burst: trim (within 10 s of the last packet)
	trimBurst    = 4 << 20           // bytes through the data plane, or allocated, in one interval that make a burst
	trimIdle     = 64 << 10          // at most this many data-plane bytes per interval is quiet (keepalives, handshakes, pings)
	trimIdleHeap = 1 << 20           // at most this many bytes allocated per interval is quiet
	trimFree     = 4 << 20           // free heap pages and garbage worth returning while quiet
	trimEvery    = 15 * trimInterval // at most one trim for free pages or garbage per this long (30 s)
)

// trimmer decides when to trim; pure, with the clock passed in.
type trimmer struct {
	last, lastAlloc uint64    // counters at the last observation
	init            bool      // last and lastAlloc are set
	burst           bool      // a burst happened since the last trim
	quietFrom       time.Time // start of the current quiet stretch; zero while busy
	lastTrim        time.Time
}

// trimKind is what observe decides.
type trimKind int

const (
	noTrim         trimKind = iota
	trimAfterBurst          // a burst is over: empty the pools, trim the batches
	trimReclaim             // a quiet agent holds free pages or garbage worth returning
)

// observe takes the data plane's total byte count, the heap's cumulative
// allocated bytes and what a trim would give back at now (free pages not
// returned to the OS, and garbage), and reports which trim to run.
func (t *trimmer) observe(total, alloc, free uint64, now time.Time) trimKind {
	if !t.init {
		t.last, t.lastAlloc, t.init, t.quietFrom = total, alloc, true, now
		return noTrim
	}
	d, da := total-t.last, alloc-t.lastAlloc
	if total < t.last { // counters reset (peers removed)
		d = 0
	}
	t.last, t.lastAlloc = total, alloc
	if d >= trimBurst || da >= trimBurst {
		t.burst = true
	}
	if d > trimIdle || da > trimIdleHeap {
		t.quietFrom = time.Time{}
		return noTrim
	}
	if t.quietFrom.IsZero() {
		t.quietFrom = now
	}
	if now.Sub(t.quietFrom) < trimQuiet {
		return noTrim
	}
	switch {
	case t.burst:
		t.burst, t.lastTrim = false, now
		return trimAfterBurst
	case free >= trimFree && now.Sub(t.lastTrim) >= trimEvery:
		t.lastTrim = now
		return trimReclaim
	}
	return noTrim
}

// trimLoop returns memory to the OS after bursts.
func (a *Agent) trimLoop(ctx context.Context) error {
	var tr trimmer
	ms := []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"}, // live and dead objects not yet swept
		{Name: "/gc/heap/live:bytes"},                // live objects, as of the last GC
	}
	tick := time.NewTicker(trimInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		stats, err := a.dev.Stats()
		if err != nil {
			continue
		}
		var total uint64
		for _, s := range stats {
			total += s.RxBytes + s.TxBytes
		}
		metrics.Read(ms)
		objects, live := ms[2].Value.Uint64(), ms[3].Value.Uint64()
		garbage := objects - min(objects, live) // allocated since the last GC, nearly all dead in a quiet agent
		switch tr.observe(total, ms[0].Value.Uint64(), ms[1].Value.Uint64()+garbage, time.Now()) {
		case noTrim:
			continue
		case trimReclaim:
			// A quiet agent's free pages or garbage: one collection frees
			// the garbage and returns every free page; the pools hold no
			// burst's buffers worth two more cycles.
			debug.FreeOSMemory()
			a.log.Debug("quiet; returned free heap pages and garbage to the OS", "reclaimable_kib", (ms[1].Value.Uint64()+garbage)>>10)
			continue
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		// Two cycles: the first moves the pools' buffers to the victim
		// cache, the second frees them; FreeOSMemory runs a third and
		// returns every free page.
		runtime.GC()
		runtime.GC()
		debug.FreeOSMemory()
		// And the pages the burst wrote into the device's receive
		// batches, which stay live (see inflight.Limiter.Trim).
		var batches int
		if lim := a.dev.Inflight(); lim != nil {
			batches = lim.Trim()
		}
		runtime.ReadMemStats(&after)
		a.log.Info("traffic burst over; returned memory to the OS",
			"heap_before_mib", before.HeapInuse>>20, "heap_after_mib", after.HeapInuse>>20,
			"released_mib", (after.HeapReleased-min(after.HeapReleased, before.HeapReleased))>>20,
			"batch_buffers_mib", batches>>20)
	}
}

//go:build bench

package bench

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// microBenchmarks are the `go test -bench` benchmarks the report includes.
var microBenchmarks = []struct{ pkg, name, what string }{
	{"./dataplane/bind", "BenchmarkClassify", "packet classifier (STUN vs WireGuard), per packet"},
	{"./dataplane/relay", "BenchmarkFrameRoundTrip", "relay frame write+read, 1400 B packet"},
	{"./coordinator/netmap", "BenchmarkFanout", "one change fanned out to 10,000 subscribers"},
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+([\d.]+) ns/op(?:\s+([\d.]+) MB/s)?(?:\s+(\d+) B/op)?(?:\s+(\d+) allocs/op)?`)

// benchMicro runs the micro-benchmarks (-count reps, -benchmem) and
// records ns/op, B/op and allocs/op.
func benchMicro(t *testing.T, rep *Report) {
	const count = 5
	for _, mb := range microBenchmarks {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^"+mb.name+"$",
			"-benchmem", "-count", strconv.Itoa(count), mb.pkg)
		cmd.Dir = ".."
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s %s: %v\n%s", mb.pkg, mb.name, err, out)
			continue
		}
		var ns, bop, allocs, mbs []float64
		for _, line := range regexp.MustCompile(`\r?\n`).Split(string(out), -1) {
			m := benchLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			v, _ := strconv.ParseFloat(m[3], 64)
			ns = append(ns, v)
			if m[4] != "" {
				v, _ := strconv.ParseFloat(m[4], 64)
				mbs = append(mbs, v)
			}
			if m[5] != "" {
				v, _ := strconv.ParseFloat(m[5], 64)
				bop = append(bop, v)
			}
			if m[6] != "" {
				v, _ := strconv.ParseFloat(m[6], 64)
				allocs = append(allocs, v)
			}
		}
		if len(ns) == 0 {
			t.Errorf("%s: no benchmark lines in output:\n%s", mb.name, out)
			continue
		}
		rep.SetRaw("micro/"+mb.name, string(out))
		sec := "Micro-benchmarks (go test -bench, -benchmem)"
		rep.Add(&Measure{Section: sec, Name: mb.name + ": " + mb.what, Unit: "ns/op", Edgewire: ns})
		if len(mbs) > 0 {
			rep.Add(&Measure{Section: sec, Name: mb.name + " throughput", Unit: "MB/s", Edgewire: mbs})
		}
		if len(bop) > 0 {
			rep.Add(&Measure{Section: sec, Name: mb.name + " memory", Unit: "B/op", Edgewire: bop})
		}
		if len(allocs) > 0 {
			rep.Add(&Measure{Section: sec, Name: mb.name + " allocations", Unit: "allocs/op", Edgewire: allocs})
		}
	}
}

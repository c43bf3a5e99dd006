//go:build bench

package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// config is the run's knobs, from the environment so `make bench` can
// shorten a run without code changes.
type config struct {
	reps    int           // BENCH_REPS: repetitions of each measure (default 3)
	dur     time.Duration // BENCH_DURATION: iperf3 run length (default 5s: 10s runs take the whole run past 30 minutes)
	ttcReps int           // BENCH_TTC_REPS: time-to-connectivity repetitions (default 10)
	recReps int           // BENCH_RECOVERY_REPS: recovery repetitions (default 3)
	scale   []int         // BENCH_SCALE: coordinator scale steps (default 1000,5000,10000)
	haScale []int         // BENCH_HA_SCALE: replicated coordinator steps (default 1000,10000)
	out     string        // BENCH_OUT: where results go (default bench/)

	idleSettle time.Duration // BENCH_IDLE_SETTLE: idle time before the after-forwarding idle measurement (default 60s)
	profiles   string        // BENCH_PROFILES: where profiles are kept: agent b's heap and goroutines, the TCP 1 stream CPU profiles, the scale bring-ups' (default: not kept)
}

func loadConfig(t *testing.T) config {
	c := config{reps: 3, dur: 5 * time.Second, ttcReps: 10, recReps: 3, scale: []int{1000, 5000, 10000}, haScale: []int{1000, 10000}, out: ".", idleSettle: time.Minute}
	atoi := func(k string, p *int) {
		if v := os.Getenv(k); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				t.Fatalf("%s=%q: want a positive integer", k, v)
			}
			*p = n
		}
	}
	atoi("BENCH_REPS", &c.reps)
	atoi("BENCH_TTC_REPS", &c.ttcReps)
	atoi("BENCH_RECOVERY_REPS", &c.recReps)
	if v := os.Getenv("BENCH_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			t.Fatalf("BENCH_DURATION=%q: want a duration >= 1s", v)
		}
		c.dur = d
	}
	if v := os.Getenv("BENCH_IDLE_SETTLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			t.Fatalf("BENCH_IDLE_SETTLE=%q: want a duration", v)
		}
		c.idleSettle = d
	}
	c.profiles = os.Getenv("BENCH_PROFILES")
	ints := func(k string, p *[]int) {
		v := os.Getenv(k)
		if v == "" {
			return
		}
		*p = nil
		for f := range strings.SplitSeq(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				t.Fatalf("%s=%q: want comma-separated positive integers", k, v)
			}
			*p = append(*p, n)
		}
	}
	ints("BENCH_SCALE", &c.scale)
	ints("BENCH_HA_SCALE", &c.haScale)
	if v := os.Getenv("BENCH_OUT"); v != "" {
		c.out = v
	}
	return c
}

// TestBench runs every benchmark and writes results.md and results.json.
// Run a subset with -run 'TestBench/<section>' (and BENCH_OUT elsewhere,
// so a partial run does not overwrite the committed results).
func TestBench(t *testing.T) {
	lab.Require(t)
	cfg := loadConfig(t)
	rep := newReport()
	rep.Config["reps"] = cfg.reps
	rep.Config["iperf3_seconds"] = cfg.dur.Seconds()
	rep.Config["ttc_reps"] = cfg.ttcReps
	rep.Config["recovery_reps"] = cfg.recReps
	rep.Config["scale"] = cfg.scale
	rep.Config["idle_settle_seconds"] = cfg.idleSettle.Seconds()
	defer func() {
		if err := rep.Write(cfg.out); err != nil {
			t.Errorf("write results: %v", err)
		} else {
			t.Logf("results written to %s", filepath.Join(cfg.out, "results.md"))
		}
	}()
	cluster.Bin(t, "edgewire-agent") // build once up front
	wgplain := buildWGPlain(t)

	t.Run("micro", func(t *testing.T) { benchMicro(t, rep) })
	t.Run("services", func(t *testing.T) { benchServices(t, rep, cfg) })
	t.Run("podnet", func(t *testing.T) { benchPodNet(t, rep, cfg) })
	t.Run("underlay", func(t *testing.T) { benchUnderlay(t, rep, cfg) })
	t.Run("dns", func(t *testing.T) { benchDNS(t, rep, cfg) })
	t.Run("overlay", func(t *testing.T) { benchOverlay(t, rep, cfg, wgplain) })
	t.Run("scale", func(t *testing.T) { benchScale(t, rep, cfg) })
	t.Run("ha", func(t *testing.T) { benchHA(t, rep, cfg) })
}

// buildWGPlain builds the plain wireguard-go reference device.
func buildWGPlain(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/wgplain")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build wgplain: %v\n%s", err, out)
	}
	return filepath.Join(dir, "wgplain")
}

//go:build bench

package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clkTck is USER_HZ, the unit of utime and stime in /proc/<pid>/stat
// (100 on every Linux architecture Go supports).
const clkTck = 100

// procCPU returns the CPU time (utime+stime) the process has used so far.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64) // field 14 overall
	st, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// procMem returns VmRSS and VmHWM (peak RSS) in MiB.
func procMem(pid int) (rss, hwm float64, err error) {
	v, err := procKiB(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:", "VmHWM:")
	return v[0] / 1024, v[1] / 1024, err
}

// procKiB reads the "<key> <n> kB" lines named by keys from a /proc file,
// in key order (0 for a key that is missing).
func procKiB(path string, keys ...string) ([]float64, error) {
	out := make([]float64, len(keys))
	b, err := os.ReadFile(path)
	if err != nil {
		return out, err
	}
	for l := range strings.Lines(string(b)) {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		if k := slices.Index(keys, f[0]); k >= 0 {
			out[k], _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return out, nil
}

// cpuMeter measures a process's CPU use over a window, as a fraction of one core.
type cpuMeter struct {
	pid   int
	wall  time.Time
	start time.Duration
}

func startCPU(pid int) (*cpuMeter, error) {
	c, err := procCPU(pid)
	if err != nil {
		return nil, err
	}
	return &cpuMeter{pid: pid, wall: time.Now(), start: c}, nil
}

// cores returns CPU time used since start divided by wall time.
func (m *cpuMeter) cores() (float64, error) {
	c, err := procCPU(m.pid)
	if err != nil {
		return 0, err
	}
	return (c - m.start).Seconds() / time.Since(m.wall).Seconds(), nil
}

// machineBusy returns the CPU time the whole machine spent busy (not
// idle or waiting for I/O) since boot, from /proc/stat: with the
// coordinator's and the harness's own times it shows how much of the
// machine other work took. 0 if unknown.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:min(len(f), 9)] { // guest time is in user time already
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0
		}
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / 100 // USER_HZ
}

// selfCPU returns this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// raiseNoFile raises this process's open-file soft limit towards n, up
// to the hard limit (raising that needs CAP_SYS_RESOURCE), and returns
// the limit now in force.
func raiseNoFile(n uint64) (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur >= n {
		return rl.Cur, nil
	}
	want := rl
	want.Cur, want.Max = n, max(rl.Max, n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		return n, nil
	}
	rl.Cur = min(n, rl.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	return rl.Cur, nil
}

var execCommand = exec.CommandContext

// memBreakdown splits an agent's resident memory into what the kernel
// sees (smaps_rollup) and what the Go runtime says it holds (the
// MemStats block of the heap profile), in MiB.
type memBreakdown struct {
	RSS, Anon, File float64 // resident: total, anonymous, file-backed (binary text and data pages)
	HeapInuse       float64 // spans holding live or not yet swept objects (address space: a 64 KiB buffer never written is not resident)
	HeapFree        float64 // heap spans free but not returned to the OS (HeapIdle - HeapReleased)
	Stacks          float64 // goroutine stacks (StackInuse)
	RuntimeOther    float64 // span, GC and other runtime metadata (MSpanSys + MCacheSys + GCSys + OtherSys + BuckHashSys)
	Goroutines      int
	NumGC           int
}

func (m memBreakdown) String() string {
	return fmt.Sprintf("RSS %.1f MiB = file-backed %.1f (the binary's text and read-only data) + anonymous %.1f; the Go runtime reports heap in use %.1f (allocated, resident only where written), heap free not yet returned %.1f, goroutine stacks %.1f (%d goroutines), runtime metadata %.1f; %d GCs so far",
		m.RSS, m.File, m.Anon, m.HeapInuse, m.HeapFree, m.Stacks, m.Goroutines, m.RuntimeOther, m.NumGC)
}

// procSmaps reads Rss and Anonymous from /proc/<pid>/smaps_rollup, in MiB.
func procSmaps(pid int) (rss, anon float64, err error) {
	v, err := procKiB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Rss:", "Anonymous:")
	return v[0] / 1024, v[1] / 1024, err
}

// clearRefs clears the referenced bits of pid's pages, so that
// fileReferenced later counts only the pages touched since.
func clearRefs(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("1"), 0)
}

// fileReferenced sums Rss and Referenced over pid's file-backed mappings
// (the binary's), in MiB: what is mapped, and what was touched since
// clearRefs. The kernel maps up to 64 KiB of cached file pages around
// every page a process touches (fault-around), so a binary whose init
// touches a page in most 64 KiB windows is resident nearly whole, while
// the pages it keeps using are fewer.
func fileReferenced(pid int) (rss, referenced float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, 0, err
	}
	file := false
	for l := range strings.Lines(string(b)) {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") { // a mapping: address perms offset dev inode [path]
			file = len(f) >= 6 && f[4] != "0"
			continue
		}
		if !file || len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "Rss:":
			rss += v / 1024
		case "Referenced:":
			referenced += v / 1024
		}
	}
	return rss, referenced, nil
}

// pprofClient talks HTTP to an agent's --pprof-socket.
func pprofClient(sock string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
}

func pprofGet(sock, path string) ([]byte, error) {
	resp, err := pprofClient(sock).Get("http://agent" + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, err
}

// memStatLine matches the MemStats lines at the end of a debug=1 heap
// profile: "# HeapIdle = 123" or, for stacks and runtime structures,
// "# Stack = <in use> / <from the OS>".
var memStatLine = regexp.MustCompile(`(?m)^# (\w+) = (\d+)(?: / (\d+))?$`)

// agentMem measures pid's memory breakdown through its pprof socket.
func agentMem(pid int, sock string) (memBreakdown, error) {
	var m memBreakdown
	var err error
	if m.RSS, m.Anon, err = procSmaps(pid); err != nil {
		return m, err
	}
	m.File = m.RSS - m.Anon
	heap, err := pprofGet(sock, "/debug/pprof/heap?debug=1")
	if err != nil {
		return m, err
	}
	st, sys := map[string]float64{}, map[string]float64{}
	for _, s := range memStatLine.FindAllStringSubmatch(string(heap), -1) {
		st[s[1]], _ = strconv.ParseFloat(s[2], 64)
		sys[s[1]], _ = strconv.ParseFloat(s[3], 64)
	}
	const mib = 1 << 20
	m.HeapInuse = st["HeapInuse"] / mib
	m.HeapFree = (st["HeapIdle"] - st["HeapReleased"]) / mib
	m.Stacks = st["Stack"] / mib
	m.RuntimeOther = (sys["MSpan"] + sys["MCache"] + st["GCSys"] + st["OtherSys"] + st["BuckHashSys"]) / mib
	m.NumGC = int(st["NumGC"])
	g, err := pprofGet(sock, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return m, err
	}
	if _, err := fmt.Sscanf(string(g), "goroutine profile: total %d", &m.Goroutines); err != nil {
		return m, fmt.Errorf("goroutine profile: %w", err)
	}
	return m, nil
}

// saveProfiles writes the agent's heap and goroutine profiles to dir
// (BENCH_PROFILES) as <name>.heap.pprof and <name>.goroutine.txt.
func saveProfiles(sock, dir, name string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, p := range []struct{ path, file string }{
		{"/debug/pprof/heap", name + ".heap.pprof"},
		{"/debug/pprof/goroutine?debug=1", name + ".goroutine.txt"},
	} {
		b, err := pprofGet(sock, p.path)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, p.file), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// rssSampler follows the RSS of some processes every 100 ms and keeps
// the largest reading of each.
type rssSampler struct {
	done chan struct{}
	out  chan map[string]float64
}

func sampleRSS(pids map[string]int) *rssSampler {
	s := &rssSampler{done: make(chan struct{}), out: make(chan map[string]float64, 1)}
	go func() {
		peak := map[string]float64{}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			for name, pid := range pids {
				if rss, _, err := procMem(pid); err == nil && rss > peak[name] {
					peak[name] = rss
				}
			}
			select {
			case <-s.done:
				s.out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// stop ends the sampling (after one last reading) and returns the peaks
// in MiB.
func (s *rssSampler) stop() map[string]float64 {
	close(s.done)
	return <-s.out
}

//go:build bench

package bench

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// cpuKinds sort a CPU profile's samples by the function they were taken
// in (the leaf): enough to say what a data path spends its CPU on. The
// first match wins; what none matches is "other".
var cpuKinds = []struct {
	name string
	re   *regexp.Regexp
}{
	{"kernel (system calls: TCP, UDP, TUN)", regexp.MustCompile(`^(internal/runtime/syscall/linux\.Syscall6|syscall\.(Raw)?Syscall6?|syscall\.rawSyscallNoError)$`)},
	{"wake-ups and scheduling", regexp.MustCompile(`^runtime\.(futex|findRunnable|schedule|stealWork|runqgrab|runqsteal|netpoll|usleep|osyield|procyield|notesleep|notewakeup|park_m|ready|wakep|startm|stopm|mcall|gopark|goready|casgstatus|execute|lock2|unlock2|pidleget|pidleput|runqput|runqget|checkTimers|selectgo|chansend|chanrecv|pollWork|resetspinning|injectglist|netpollready|netpollunblock)$`)},
	{"TLS records (AES-GCM)", regexp.MustCompile(`^crypto/internal/fips140/aes`)},
	{"WireGuard (ChaCha20-Poly1305)", regexp.MustCompile(`^golang\.org/x/crypto/(chacha20|poly1305|internal/poly1305)`)},
	{"copies (memmove, memclr)", regexp.MustCompile(`^runtime\.(memmove|memclrNoHeapPointers)$`)},
	{"checksums (TUN offloads)", regexp.MustCompile(`^golang\.zx2c4\.com/wireguard/tun\.checksum`)},
	{"garbage collection", regexp.MustCompile(`^runtime\.(gcDrain|scanobject|greyobject|markBits|findObject|scanblock|sweepone|gcBgMarkWorker|wbBuf|bulkBarrier|heapBits|spanOf|markroot|scanstack|typePointers|tryDeferToSpanScan|scanSpan)`)},
}

const otherKind = "other (Go code: framing, queues, WireGuard's state machine)"

// cpuKindNames lists the kinds in report order, other last.
func cpuKindNames() []string {
	var names []string
	for _, k := range cpuKinds {
		names = append(names, k.name)
	}
	return append(names, otherKind)
}

// kindOf returns fn's kind.
func kindOf(fn string) string {
	for _, k := range cpuKinds {
		if k.re.MatchString(fn) {
			return k.name
		}
	}
	return otherKind
}

// profileKinds reads a CPU profile with `go tool pprof` and returns the
// cores it measured, by kind: each kind's samples over the profile's
// duration.
func profileKinds(file string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=1000000", "-unit=ms", file).Output()
	if err != nil {
		return nil, fmt.Errorf("go tool pprof %s: %w", file, err)
	}
	return parseTop(string(out))
}

// durationLine is pprof's "Duration: 8.01s, Total samples = ..." header.
var durationLine = regexp.MustCompile(`(?m)^Duration: ([0-9.]+[a-zµ]*s),`)

// parseTop parses `go tool pprof -top -unit=ms` output into cores by kind.
func parseTop(out string) (map[string]float64, error) {
	m := durationLine.FindStringSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("pprof -top: no Duration line")
	}
	dur, err := time.ParseDuration(m[1])
	if err != nil || dur <= 0 {
		return nil, fmt.Errorf("pprof -top: duration %q", m[1])
	}
	kinds := map[string]float64{}
	table := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if !table {
			table = len(f) == 5 && f[0] == "flat" && f[1] == "flat%"
			continue
		}
		if len(f) < 6 {
			continue
		}
		ms, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "ms"), 64)
		if err != nil {
			return nil, fmt.Errorf("pprof -top: flat %q", f[0])
		}
		kinds[kindOf(f[5])] += ms / 1000 / dur.Seconds()
	}
	if !table {
		return nil, fmt.Errorf("pprof -top: no table")
	}
	return kinds, nil
}

//go:build bench

package bench

import (
	"math"
	"strings"
	"testing"
)

func TestParseTopKinds(t *testing.T) {
	out := `File: edgewire-coordinator
Type: cpu
Duration: 2s, Total samples = 1000ms (50.00%)
Showing nodes accounting for 1000ms, 100% of 1000ms total
      flat  flat%   sum%        cum   cum%
     500ms 50.00% 50.00%      500ms 50.00%  internal/runtime/syscall/linux.Syscall6
     200ms 20.00% 70.00%      200ms 20.00%  crypto/internal/fips140/aes/gcm.gcmAesEnc
     100ms 10.00% 80.00%      100ms 10.00%  runtime.memmove
     100ms 10.00% 90.00%      100ms 10.00%  runtime.futex
     100ms 10.00%   100%      300ms 30.00%  github.com/edgewire/edgewire/dataplane/relay.writeQueued
         0     0%   100%      350ms 33.02%  syscall.Write (inline)
`
	got, err := parseTop(out)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{ // cores: ms / 2000 ms
		"kernel (system calls: TCP, UDP, TUN)": 0.25,
		"TLS records (AES-GCM)":                0.10,
		"copies (memmove, memclr)":             0.05,
		"wake-ups and scheduling":              0.05,
		otherKind:                              0.05,
	}
	for k, v := range want {
		if math.Abs(got[k]-v) > 1e-9 {
			t.Errorf("%s: %v cores, want %v", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("kinds %v, want %v", got, want)
	}
	for _, bad := range []string{
		"",                      // nothing
		"Duration: 2s, Total\n", // no table
		"flat flat% sum% cum cum% x\n 1ms 1% 1% 1ms 1% f\n", // no duration
		"Duration: 0s, Total\n      flat  flat%   sum%        cum   cum%\n",
		"Duration: 1s, Total\n      flat  flat%   sum%        cum   cum%\n  1.5x 1% 1% 1ms 1% f\n",
	} {
		if k, err := parseTop(bad); err == nil {
			t.Errorf("parseTop(%q) = %v, want an error", bad, k)
		}
	}
}

func TestKindOf(t *testing.T) {
	for fn, want := range map[string]string{
		"golang.org/x/crypto/chacha20poly1305.chacha20Poly1305Seal": "WireGuard (ChaCha20-Poly1305)",
		"crypto/internal/fips140/aes/gcm.gcmAesDec":                 "TLS records (AES-GCM)",
		"syscall.RawSyscall6":                                       "kernel (system calls: TCP, UDP, TUN)",
		"runtime.findRunnable":                                      "wake-ups and scheduling",
		"golang.zx2c4.com/wireguard/tun.checksumNoFold":             "checksums (TUN offloads)",
		"runtime.scanobject":                                        "garbage collection",
		"runtime.memmoveX":                                          otherKind,
		"bufio.(*Reader).fill":                                      otherKind,
	} {
		if got := kindOf(fn); got != want {
			t.Errorf("kindOf(%s) = %q, want %q", fn, got, want)
		}
	}
	if names := cpuKindNames(); names[len(names)-1] != otherKind || !strings.Contains(strings.Join(names, "|"), "garbage") {
		t.Errorf("kind names %v", names)
	}
}

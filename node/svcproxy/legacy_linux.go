package svcproxy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// legacyKubeProxy reports whether kube-proxy's nat chain KUBE-SERVICES
// exists in the legacy (x_tables) iptables of the configured namespace,
// which netlink to nftables cannot see. It looks only when that
// namespace already has a legacy nat table (so it never creates one) and
// iptables-legacy-save is installed.
func (p *Proxy) legacyKubeProxy(ctx context.Context) (bool, error) {
	if p.cfg.NetNS == "" {
		return legacyKubeProxyHere(ctx)
	}
	type result struct {
		found bool
		err   error
	}
	res := make(chan result, 1)
	go func() {
		// The thread is never unlocked: Go discards it when this
		// goroutine ends instead of reusing it in the other namespace.
		runtime.LockOSThread()
		f, err := os.Open(p.cfg.NetNS)
		if err != nil {
			res <- result{err: fmt.Errorf("network namespace: %w", err)}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- result{err: fmt.Errorf("setns %s: %w", p.cfg.NetNS, err)}
			return
		}
		found, err := legacyKubeProxyHere(ctx)
		res <- result{found, err}
	}()
	r := <-res
	return r.found, r.err
}

// legacyKubeProxyHere is legacyKubeProxy for the calling thread's
// namespace. Children inherit the thread's namespace.
func legacyKubeProxyHere(ctx context.Context) (bool, error) {
	names, err := os.ReadFile("/proc/thread-self/net/ip_tables_names")
	if err != nil || !slices.Contains(strings.Fields(string(names)), "nat") {
		return false, nil // no legacy nat table (or no ip_tables at all)
	}
	bin, err := exec.LookPath("iptables-legacy-save")
	if err != nil {
		return false, nil
	}
	out, err := exec.CommandContext(ctx, bin, "-t", "nat").CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("%s -t nat: %w: %s", bin, err, strings.TrimSpace(string(out)))
	}
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, ":KUBE-SERVICES ") {
			return true, nil
		}
	}
	return false, nil
}

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/remote"

	"github.com/edgewire/edgewire/e2e/lab"
)

// needChromium returns the path of Debian's chromium, skipping the test
// when it is missing, unless the Makefile runs it (EDGEWIRE_TOOLS_REQUIRED;
// `make test` installs chromium, so there it is a failure).
func needChromium(t *testing.T) string { return needTool(t, "chromium", "chromium") }

// needTool returns the path of a tool from a Debian package, skipping the
// test when it is missing unless the Makefile runs it
// (EDGEWIRE_TOOLS_REQUIRED: hack/install-deps.sh installed it, so a
// missing one is a failure).
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("EDGEWIRE_TOOLS_REQUIRED") != "" {
			t.Fatalf("%s not found (hack/install-deps.sh installs %s): %v", name, pkg, err)
		}
		t.Skipf("%s not installed (apt-get install %s)", name, pkg)
	}
	return p
}

// startBrowser runs headless Chromium inside h's namespace, so every
// request it makes comes from h's lab address and can reach lab addresses
// only, and returns a chromedp context driving one tab of it. The lab kills
// the browser on teardown; the tab and the DevTools proxy end with the test.
//
// The test process cannot reach into the namespace by address, so the
// DevTools websocket goes through a proxy: a listener on 127.0.0.1 in the
// root namespace whose connections are dialled on to the browser's
// debugging port from inside h (lab.Host.DialTCP).
//
// The browser resolves no names and reaches only the hosts in reach (IP
// addresses: Chromium's resolver rules map every other host to "not
// found", IP literals included).
func startBrowser(t *testing.T, l *lab.Lab, h *lab.Host, chromium string, reach ...netip.Addr) context.Context {
	t.Helper()
	dir := filepath.Join(l.Dir(), "chromium-"+h.Name())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	argv := []string{chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		// Nothing but the page: no updates, sync, metrics or prefetching,
		// and no name resolution at all (the test uses addresses).
		"--disable-quic", "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
		"--disable-domain-reliability", "--disable-client-side-phishing-detection", "--dns-prefetch-disable",
		"--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication",
		"--host-resolver-rules=" + resolverRules(reach), "--password-store=basic", "--use-mock-keychain",
		"--user-data-dir=" + dir, "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
		"--window-size=1200,900", "about:blank"}
	env := []string{"HOME=" + dir, "XDG_CONFIG_HOME=" + dir, "XDG_CACHE_HOME=" + dir}
	proc, err := h.Start("chromium", env, argv...)
	if err != nil {
		t.Fatal(err)
	}
	// Chromium writes its port and the browser's websocket path once it
	// listens.
	var port, path string
	err = lab.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		if proc.Exited() {
			return fmt.Errorf("chromium exited: %v\n%s", proc.ExitErr(), proc.Log())
		}
		b, err := os.ReadFile(filepath.Join(dir, "DevToolsActivePort"))
		if err != nil {
			return err
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[1], "/devtools/browser/") {
			return fmt.Errorf("DevToolsActivePort: %q, want a port and /devtools/browser/<id>", b)
		}
		port, path = lines[0], lines[1]
		return nil
	})
	if err != nil {
		t.Fatalf("chromium did not open its DevTools port: %v", err)
	}
	local := proxyInto(t, h, net.JoinHostPort("127.0.0.1", port))
	allocCtx, cancelAlloc := remote.NewAllocator(context.Background(), "ws://"+local+path, remote.NoModifyURL)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("connect to chromium: %v\n%s", err, proc.Log())
	}
	return ctx
}

// resolverRules maps every host but reach to "not found".
func resolverRules(reach []netip.Addr) string {
	rules := []string{"MAP * ~NOTFOUND"}
	for _, a := range reach {
		rules = append(rules, "EXCLUDE "+a.String())
	}
	return strings.Join(rules, ", ")
}

// proxyInto listens on 127.0.0.1 in the root namespace and forwards every
// connection to target ("ip:port") dialled from inside h. It stops, with
// every connection closed, when the test ends.
func proxyInto(t *testing.T, h *lab.Host, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards conns and closed
		conns []net.Conn
		done  bool
	)
	keep := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if done {
			c.Close()
			return false
		}
		conns = append(conns, c)
		return true
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at the end of the test
			}
			if !keep(c) {
				return
			}
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				up, err := h.DialTCP(ctx, target)
				cancel()
				if err != nil {
					t.Logf("devtools proxy: %v", err)
					c.Close()
					return
				}
				if !keep(up) {
					c.Close()
					return
				}
				// Either direction ending ends both.
				var once sync.Once
				end := func() { once.Do(func() { c.Close(); up.Close() }) }
				var pipe sync.WaitGroup
				pipe.Go(func() { io.Copy(up, c); end() })
				pipe.Go(func() { io.Copy(c, up); end() })
				pipe.Wait()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		done = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// eval evaluates expr in the tab (awaiting a promise it returns) and
// decodes its value, bounding the call to 10 s.
func eval[T any](ctx context.Context, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// navigate loads url in the tab and returns the response's HTTP status.
func navigate(ctx context.Context, url string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(url))
	if err != nil {
		return 0, err
	}
	if resp == nil {
		return 0, errors.New("no response")
	}
	return resp.Status, nil
}

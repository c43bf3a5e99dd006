// Package logtest gives tests a logger that checks every line the code
// under test logs, so a whole in-process run (agents, a coordinator)
// keeps the log rules of logging.CheckLine, not just the lines a unit
// test thought of.
package logtest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/edgewire/edgewire/internal/logging"
)

// maxReported bounds the problems one test reports.
const maxReported = 20

// New returns a logger at debug level. Every record is rendered as
// edgewire-agent --log-format json renders it and checked with
// logging.CheckLine; the test fails when it ends if any line broke a
// rule. With -v the records also go to the test's output, as text.
// Records logged after the test's cleanup (by goroutines that outlive
// it) are neither checked nor shown.
func New(t testing.TB) *slog.Logger {
	c := &checker{}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.done = true
		for _, p := range c.problems {
			t.Errorf("bad log line: %s", p)
		}
		if c.dropped > 0 {
			t.Errorf("... and %d more bad log lines", c.dropped)
		}
	})
	json, err := logging.NewHandler(c, "json", slog.LevelDebug)
	if err != nil {
		panic(err) // "json" is a format NewHandler knows
	}
	var h slog.Handler = json
	if testing.Verbose() {
		text, err := logging.NewHandler(&output{t: t, c: c}, "text", slog.LevelDebug)
		if err != nil {
			panic(err)
		}
		h = tee{json, text}
	}
	return slog.New(h)
}

// checker is the JSON handler's writer: slog writes one whole line per
// record in one Write.
type checker struct {
	mu       sync.Mutex // guards problems, dropped, done
	problems []string
	dropped  int
	done     bool
}

func (c *checker) Write(p []byte) (int, error) {
	err := logging.CheckLine(bytes.TrimSuffix(p, []byte("\n")))
	if err == nil {
		return len(p), nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.done:
	case len(c.problems) < maxReported:
		c.problems = append(c.problems, fmt.Sprintf("%s\n\t%s", strings.ReplaceAll(err.Error(), "\n", "; "), bytes.TrimSpace(p)))
	default:
		c.dropped++
	}
	return len(p), nil
}

// output writes text lines to the test's log until the test ends.
type output struct {
	t testing.TB
	c *checker
}

func (o *output) Write(p []byte) (int, error) {
	o.c.mu.Lock()
	defer o.c.mu.Unlock()
	if !o.c.done {
		o.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// tee hands every record to two handlers.
type tee [2]slog.Handler

func (h tee) Enabled(ctx context.Context, l slog.Level) bool {
	return h[0].Enabled(ctx, l) || h[1].Enabled(ctx, l)
}

func (h tee) Handle(ctx context.Context, r slog.Record) error {
	var errs [2]error
	for i, hh := range h {
		if hh.Enabled(ctx, r.Level) {
			errs[i] = hh.Handle(ctx, r.Clone())
		}
	}
	if errs[0] != nil {
		return errs[0]
	}
	return errs[1]
}

func (h tee) WithAttrs(as []slog.Attr) slog.Handler {
	return tee{h[0].WithAttrs(as), h[1].WithAttrs(as)}
}

func (h tee) WithGroup(name string) slog.Handler {
	return tee{h[0].WithGroup(name), h[1].WithGroup(name)}
}

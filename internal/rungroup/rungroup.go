// Package rungroup runs the long-lived parts of a daemon (servers,
// loops, watchers) as one unit, so the coordinator, the relay and the
// agent start and stop the same way: every part is a named goroutine,
// the first part to fail stops all the others, and the daemon returns
// only when every part has.
//
// A part is a function of a context that runs until the context ends and
// then returns. Returning earlier is a failure either way: with an error,
// the error; with nil, ErrStopped, since a server or loop that quietly
// ends while the daemon is up is a bug that would otherwise leave the
// daemon running without it. Parts that finish on purpose (a one-off
// job) are started with GoOneShot instead. What a part returns after the
// context ended is its reaction to the stop and not a failure ("cache did
// not sync", "use of closed connection"); a part whose shutdown can go
// wrong in a way worth knowing logs it.
//
// A panic in a part is not recovered: it ends the process, as a panic in
// any goroutine does.
package rungroup

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrStopped is the error of a part started with Go that returned nil
// while the group was still running.
var ErrStopped = errors.New("stopped unexpectedly")

// Group is a set of parts sharing one context. Its methods are safe for
// concurrent use; Go and GoOneShot must not be called after Wait returned.
type Group struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // one per part still running

	mu  sync.Mutex // guards err
	err error      // the failure that stopped the group, wrapped with its part's name
}

// New returns a group and the context its parts run with. The context
// ends when parent does, when a part fails, or when Wait returns; its
// cause (context.Cause) is then the failure, if there was one.
func New(parent context.Context) (*Group, context.Context) {
	ctx, cancel := context.WithCancelCause(parent)
	return &Group{ctx: ctx, cancel: cancel}, ctx
}

// Go starts part f, named name in its error. f must run until ctx ends:
// returning earlier, even with nil, stops the group.
func (g *Group) Go(name string, f func(ctx context.Context) error) {
	g.start(name, f, false)
}

// GoOneShot starts part f, which may finish while the group runs: its
// returning nil ends only itself. An error stops the group as with Go.
func (g *Group) GoOneShot(name string, f func(ctx context.Context) error) {
	g.start(name, f, true)
}

func (g *Group) start(name string, f func(context.Context) error, oneShot bool) {
	g.wg.Go(func() {
		err := f(g.ctx)
		switch {
		case g.ctx.Err() != nil:
			return // stopped because the group did
		case err == nil && oneShot:
			return
		case err == nil:
			err = ErrStopped
		}
		g.fail(fmt.Errorf("%s: %w", name, err))
	})
}

// fail records err if it is the first failure and stops the group. Two
// parts failing at once both get here; the first to lock wins.
func (g *Group) fail(err error) {
	g.mu.Lock()
	if g.err == nil {
		g.err = err
	}
	g.mu.Unlock()
	g.cancel(err)
}

// Wait waits for every part to return and then ends the group's context.
// It returns why the group stopped: the failure of the part that stopped
// it, as "<name>: <error>", or nil if the parent context ended it.
func (g *Group) Wait() error {
	g.wg.Wait()
	g.cancel(nil)
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// Serve adapts a server with the usual Serve/Close pair to a part: it
// runs serve until ctx ends, then calls stop, and returns once serve has
// returned. stop is called exactly once, also when serve returns first
// (to release what serve leaves open); serve's error is returned, and its
// nil return after stop is the clean end. stop must make serve return.
func Serve(ctx context.Context, serve func() error, stop func()) error {
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case <-ctx.Done():
		stop()
		return <-errc
	case err := <-errc:
		stop()
		return err
	}
}

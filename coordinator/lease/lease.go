// Package lease elects the one coordinator replica that serves agents,
// on a coordination.k8s.io/v1 Lease in the store's namespace.
//
// It is client-go's Lease protocol (holder identity, renew time, lease
// duration, transitions) with one policy of its own, for the API server
// going away: client-go's elector steps down when it cannot renew, but a
// leader that loses the API server must keep serving the agent streams
// it holds from memory (their tunnels, signals and relay tickets need
// nothing written), so this one keeps leading, reports it is degraded,
// and steps down only once it reads that another replica holds the
// lease. The other side of that policy keeps the leader when the API
// server returns: a standby takes an unrenewed lease only after watching
// it unchanged for its whole duration with every read succeeding, and
// the old leader renews within a second of the API server's return.
// While the API server is away no replica can take over, so two leaders
// exist only if one replica loses the API server and another does not;
// the one that cannot write cannot change the store either.
package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	coordclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
)

// Defaults.
const (
	DefaultDuration = 6 * time.Second
	// callTimeout bounds one API call.
	callTimeout = 5 * time.Second
)

// Config configures an Elector.
type Config struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string // the Lease's name
	Identity  string // this replica's, unique among replicas (its pod name)
	// Duration is how long a lease stays valid without a renewal (default
	// 6 s): a dead leader is replaced after about this long.
	Duration time.Duration
	// RenewEvery is how often the leader renews and a standby looks
	// (default Duration/6).
	RenewEvery time.Duration
	Logger     *slog.Logger
}

// Status is what an Elector knows.
type Status struct {
	Leading bool
	// Holder is the identity holding the lease as last read ("" unknown).
	Holder string
	// Unreachable is set while the API server does not answer (since
	// then); a leader keeps leading through it.
	Unreachable time.Time
	Transitions int32
}

// Elector runs for one replica.
type Elector struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex
	st Status
}

// New checks cfg and returns an Elector.
func New(cfg Config) (*Elector, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Name == "" || cfg.Identity == "" {
		return nil, errors.New("lease: a client, namespace, name and identity are required")
	}
	if cfg.Duration <= 0 {
		cfg.Duration = DefaultDuration
	}
	if cfg.Duration < 2*time.Second {
		return nil, fmt.Errorf("lease: duration %s is under 2 s", cfg.Duration)
	}
	if cfg.RenewEvery <= 0 {
		cfg.RenewEvery = cfg.Duration / 6
	}
	if cfg.RenewEvery >= cfg.Duration/2 {
		return nil, fmt.Errorf("lease: renewing every %s leaves no margin in a %s lease", cfg.RenewEvery, cfg.Duration)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Elector{cfg: cfg, log: cfg.Logger}, nil
}

// Status returns a snapshot.
func (e *Elector) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st
}

func (e *Elector) update(fn func(*Status)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	fn(&e.st)
}

func (e *Elector) reachable(ok bool, err error) {
	e.update(func(s *Status) {
		switch {
		case ok && !s.Unreachable.IsZero():
			e.log.Info("Kubernetes API server reachable again", "unreachable_for", time.Since(s.Unreachable).Round(time.Millisecond))
			s.Unreachable = time.Time{}
		case !ok && s.Unreachable.IsZero():
			e.log.Warn("Kubernetes API server unreachable", "err", err, "leading", s.Leading)
			s.Unreachable = time.Now()
		}
	})
}

// Run takes part in the election until ctx ends. Each time this replica
// becomes leader it calls lead with a context that ends when it stops
// leading, and waits for lead to return. An error from lead gives the
// lease up (another replica may do better) and is retried after a pause;
// Run returns nil when ctx ends, releasing a lease it holds so a standby
// takes over at once.
func (e *Elector) Run(ctx context.Context, lead func(context.Context) error) error {
	for {
		l, err := e.acquire(ctx)
		if err != nil {
			return nil // ctx ended
		}
		e.log.Info("leading", "identity", e.cfg.Identity, "transitions", ptrVal(l.Spec.LeaseTransitions))
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- lead(lctx) }()
		var leadErr error
		l, leadErr = e.hold(lctx, l, done)
		cancel()
		if leadErr == nil {
			leadErr = <-done
		}
		e.update(func(s *Status) { s.Leading = false })
		if l != nil {
			e.release(l)
		}
		if ctx.Err() != nil {
			return nil
		}
		if leadErr != nil && !errors.Is(leadErr, context.Canceled) {
			e.log.Error("serving as leader failed; lease given up", "err", leadErr)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(e.cfg.Duration):
			}
		}
	}
}

func (e *Elector) leases() coordclient.LeaseInterface {
	return e.cfg.Client.CoordinationV1().Leases(e.cfg.Namespace)
}

// acquire waits until this replica holds the lease.
func (e *Elector) acquire(ctx context.Context) (*coordv1.Lease, error) {
	var seenRV string
	var seenAt time.Time
	t := time.NewTicker(e.cfg.RenewEvery)
	defer t.Stop()
	for {
		l, err := e.tryAcquire(ctx, &seenRV, &seenAt)
		if l != nil {
			e.update(func(s *Status) {
				s.Leading, s.Holder, s.Transitions = true, e.cfg.Identity, ptrVal(l.Spec.LeaseTransitions)
			})
			return l, nil
		}
		if err != nil {
			seenRV = "" // an observation must be unbroken
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// tryAcquire makes one attempt: it creates the lease, takes one that is
// free, ours or expired by observation, or notes what it saw.
func (e *Elector) tryAcquire(ctx context.Context, seenRV *string, seenAt *time.Time) (*coordv1.Lease, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	now := metav1.NewMicroTime(time.Now())
	secs := int32(e.cfg.Duration / time.Second)
	cur, err := e.leases().Get(cctx, e.cfg.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l := &coordv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: e.cfg.Name, Namespace: e.cfg.Namespace},
			Spec: coordv1.LeaseSpec{HolderIdentity: &e.cfg.Identity, LeaseDurationSeconds: &secs,
				AcquireTime: &now, RenewTime: &now},
		}
		got, err := e.leases().Create(cctx, l, metav1.CreateOptions{})
		e.reachable(err == nil || apierrors.IsAlreadyExists(err), err)
		return got, err
	}
	e.reachable(err == nil, err)
	if err != nil {
		return nil, err
	}
	holder := ""
	if cur.Spec.HolderIdentity != nil {
		holder = *cur.Spec.HolderIdentity
	}
	e.update(func(s *Status) { s.Holder = holder })
	if holder != "" && holder != e.cfg.Identity {
		if cur.ResourceVersion != *seenRV {
			*seenRV, *seenAt = cur.ResourceVersion, time.Now()
			return nil, nil
		}
		d := e.cfg.Duration
		if cur.Spec.LeaseDurationSeconds != nil {
			d = time.Duration(*cur.Spec.LeaseDurationSeconds) * time.Second
		}
		if time.Since(*seenAt) < d {
			return nil, nil
		}
		e.log.Info("taking over a lease its holder stopped renewing", "holder", holder, "unrenewed_for", time.Since(*seenAt).Round(time.Millisecond))
	}
	l := cur.DeepCopy()
	if holder != e.cfg.Identity {
		l.Spec.LeaseTransitions = ptrTo(ptrVal(l.Spec.LeaseTransitions) + 1)
		l.Spec.AcquireTime = &now
	}
	l.Spec.HolderIdentity = &e.cfg.Identity
	l.Spec.LeaseDurationSeconds = &secs
	l.Spec.RenewTime = &now
	got, err := e.leases().Update(cctx, l, metav1.UpdateOptions{})
	if err != nil {
		e.reachable(apierrors.IsConflict(err), err)
		return nil, err
	}
	return got, nil
}

// hold renews the lease until it is lost to another replica, ctx ends,
// or lead returns (its error is returned). The lease as last written is
// returned unless it was lost.
func (e *Elector) hold(ctx context.Context, l *coordv1.Lease, done <-chan error) (*coordv1.Lease, error) {
	t := time.NewTicker(e.cfg.RenewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return l, nil
		case err := <-done:
			if err == nil {
				err = errors.New("stopped serving")
			}
			return l, err
		case <-t.C:
		}
		next, lost := e.renew(ctx, l)
		if lost {
			e.log.Warn("another replica holds the lease; stepping down", "holder", e.Status().Holder)
			return nil, nil
		}
		l = next
	}
}

// renew writes one renewal. A conflict is read back: lost if another
// replica holds the lease now.
func (e *Elector) renew(ctx context.Context, l *coordv1.Lease) (*coordv1.Lease, bool) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	next := l.DeepCopy()
	now := metav1.NewMicroTime(time.Now())
	next.Spec.RenewTime = &now
	got, err := e.leases().Update(cctx, next, metav1.UpdateOptions{})
	if err == nil {
		e.reachable(true, nil)
		return got, false
	}
	if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		e.reachable(false, err)
		return l, false // keep leading through an outage
	}
	cur, err := e.leases().Get(cctx, e.cfg.Name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			e.update(func(s *Status) { s.Holder = "" })
			return nil, true
		}
		e.reachable(false, err)
		return l, false
	}
	e.reachable(true, nil)
	holder := ""
	if cur.Spec.HolderIdentity != nil {
		holder = *cur.Spec.HolderIdentity
	}
	e.update(func(s *Status) { s.Holder = holder })
	if holder != e.cfg.Identity {
		return nil, true
	}
	return cur, false // ours still (a write we did not see the answer to)
}

// release hands the lease back on a clean stop, so a standby need not
// wait out its duration.
func (e *Elector) release(l *coordv1.Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	next := l.DeepCopy()
	empty := ""
	next.Spec.HolderIdentity = &empty
	if _, err := e.leases().Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		e.log.Info("could not release the lease; a standby takes it when it expires", "err", err)
		return
	}
	e.log.Info("lease released")
}

func ptrTo[T any](v T) *T { return &v }

func ptrVal[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

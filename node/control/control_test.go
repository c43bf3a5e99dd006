package control

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/node/identity"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

// refusing is a coordinator that refuses every Connect stream when the
// test says so: each stream hands the test a channel for the error that
// ends it, so the test decides how long the session lasts on its clock.
type refusing struct {
	api.UnimplementedControlServer
	streams chan chan<- error
}

func (r *refusing) Connect(stream grpc.BidiStreamingServer[api.ClientMessage, api.ServerMessage]) error {
	end := make(chan error)
	select {
	case r.streams <- end:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	select {
	case err := <-end:
		return err
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
}

// serveRefusing starts a refusing coordinator over bufconn, with a
// self-signed certificate for the coordinator's TLS name, and returns it
// with the enrolment and dialer a Client needs to reach it.
func serveRefusing(t *testing.T) (*refusing, identity.Enrolment, func(context.Context, string) (net.Conn, error)) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "edgewire test coordinator"},
		DNSNames:              []string{jointoken.ServerName},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}},
		MinVersion:   tls.VersionTLS13,
	})))
	r := &refusing{streams: make(chan chan<- error)}
	api.RegisterControlServer(srv, r)
	lis := bufconn.Listen(1 << 16)
	served := make(chan struct{})
	go func() { srv.Serve(lis); close(served) }()
	t.Cleanup(func() { srv.Stop(); <-served })
	enr := identity.Enrolment{
		Coordinator: "passthrough:///coordinator",
		ServerName:  jointoken.ServerName,
		CAPEM:       string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
	}
	return r, enr, func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }
}

// TestReconnectBackoff: against a coordinator that refuses every stream,
// the client waits between attempts a time in [backoff/2, backoff), the
// backoff doubling from MinBackoff up to MaxBackoff, and starting over
// after a session that lasted longer than healthySession.
func TestReconnectBackoff(t *testing.T) {
	coord, enr, dial := serveRefusing(t)
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	const minBackoff, maxBackoff = time.Second, 8 * time.Second
	c, err := New(Config{
		Enrolment: enr, PrivateKey: priv, Dial: dial, Clock: clk,
		OnMap:      func(*api.NetworkMap) error { return nil },
		MinBackoff: minBackoff, MaxBackoff: maxBackoff,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: got %v, want nil after cancel", err)
		}
	})

	// wait polls for cond; it fails the test (rather than hanging) if the
	// client never gets there.
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	// Each wait is measured to backoff/2/steps; spread collects the
	// steps at which waits ended.
	const steps = 8
	spread := map[int]bool{}
	for i, a := range []struct {
		session time.Duration // how long the coordinator keeps the stream before refusing it
		backoff time.Duration // the backoff the next wait is drawn under
	}{
		{0, time.Second},
		{0, 2 * time.Second},
		{0, 4 * time.Second},
		{0, 8 * time.Second},
		{0, 8 * time.Second}, // capped
		{0, 8 * time.Second},
		{healthySession - time.Second, 8 * time.Second}, // not long enough to count as healthy
		{healthySession + time.Second, time.Second},     // healthy: start over
		{0, 2 * time.Second},
		{0, 4 * time.Second},
		{0, 8 * time.Second},
		{0, 8 * time.Second},
	} {
		var end chan<- error
		select {
		case end = <-coord.streams:
		case <-time.After(10 * time.Second):
			t.Fatalf("attempt %d: the client did not reconnect", i)
		}
		clk.Advance(a.session)
		end <- status.Error(codes.Unavailable, "coordinator refuses streams")
		wait("the backoff timer", func() bool { return clk.Timers() == 1 })

		// The timer must not fire before backoff/2, and must by backoff.
		clk.Advance(a.backoff/2 - time.Nanosecond)
		if clk.Timers() != 1 {
			t.Fatalf("attempt %d: reconnected sooner than %v, want [%v, %v)", i, a.backoff/2, a.backoff/2, a.backoff)
		}
		step := 1
		for ; step <= steps; step++ {
			clk.Advance(a.backoff / 2 / steps)
			if clk.Timers() == 0 {
				break
			}
		}
		if step > steps {
			t.Fatalf("attempt %d: no reconnect within %v, want [%v, %v)", i, a.backoff-time.Nanosecond, a.backoff/2, a.backoff)
		}
		spread[step] = true
	}
	// The waits are drawn, not fixed: not all in the same eighth of
	// their range (by chance: 8^-11).
	if len(spread) < 2 {
		t.Errorf("every wait fell in the same eighth (%v) of [backoff/2, backoff), want them jittered", spread)
	}
}

// TestNoHiddenBackoff: while the coordinator refuses connections, the
// client retries on its own backoff; once it accepts again, the next
// attempt reaches it, not one delayed by a second backoff inside the gRPC
// client (whose default grows to 120 s and answers with the cached
// failure meanwhile).
func TestNoHiddenBackoff(t *testing.T) {
	coord, enr, dial := serveRefusing(t)
	var down atomic.Bool
	down.Store(true)
	var dials atomic.Int64
	refusingDial := func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		if down.Load() {
			return nil, syscall.ECONNREFUSED
		}
		return dial(ctx, addr)
	}
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{
		Enrolment: enr, PrivateKey: priv, Dial: refusingDial,
		OnMap:      func(*api.NetworkMap) error { return nil },
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// Long enough for gRPC's own backoff (1 s, x1.6 per failure) to have
	// grown past the client's 100 ms cap.
	time.Sleep(3500 * time.Millisecond)
	if n := dials.Load(); n < 10 {
		t.Errorf("%d dials in 3.5 s with a 100 ms backoff cap; want one per attempt", n)
	}
	down.Store(false)
	up := time.Now()
	select {
	case end := <-coord.streams:
		if d := time.Since(up); d > 500*time.Millisecond {
			t.Errorf("first stream %v after the coordinator came back; want within the client's backoff cap (100 ms) and a dial", d)
		}
		end <- status.Error(codes.Unavailable, "bye")
	case <-time.After(10 * time.Second):
		t.Fatal("no stream within 10 s of the coordinator coming back")
	}
}

func TestAddrs(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"coord:8443", []string{"coord:8443"}, false},
		{"a:1,b:2", []string{"a:1", "b:2"}, false},
		{" a:1 , b:2 ,a:1", []string{"a:1", "b:2"}, false},
		{"[fd00::1]:8443,10.0.0.1:8443", []string{"[fd00::1]:8443", "10.0.0.1:8443"}, false},
		{"", nil, true},
		{"a:1,", nil, true},
		{"a", nil, true},
		{":8443", nil, true},
		{"a:", nil, true},
	}
	for _, tt := range tests {
		got, err := Addrs(tt.in)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("Addrs(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestReplicaAddresses: with several coordinator addresses the client
// moves past one that refuses (a standby replica, which does not listen)
// to the one that serves.
func TestReplicaAddresses(t *testing.T) {
	coord, enr, dial := serveRefusing(t)
	enr.Coordinator = "standby.test:8443,leader.test:8443"
	var mu sync.Mutex
	var dialed []string
	d := func(ctx context.Context, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		if addr != "leader.test:8443" {
			return nil, syscall.ECONNREFUSED
		}
		return dial(ctx, addr)
	}
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Enrolment: enr, PrivateKey: priv, Dial: d, OnMap: func(*api.NetworkMap) error { return nil },
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case end := <-coord.streams:
		end <- status.Error(codes.Unavailable, "bye")
	case <-time.After(5 * time.Second):
		t.Fatal("no stream within 5 s")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dialed) < 2 || dialed[0] != "standby.test:8443" || !slices.Contains(dialed, "leader.test:8443") {
		t.Errorf("dialed %v; want the standby first, then the leader", dialed)
	}
}

// TestBackoffPolicy: the backoff doubles per failed attempt up to its
// cap, starts over after a healthy session, and stays at its minimum for
// failoverWindow after an established stream ends (a replica taking over,
// a coordinator restarting), at most one window per healthySession.
func TestBackoffPolicy(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	type step struct {
		session     [2]float64 // a session from, to (seconds); zero: a failed attempt
		established bool
		waitedAt    float64 // when the wait after it ended
		want        time.Duration
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"failed attempts double to the cap", []step{
			{waitedAt: 1, want: 2 * time.Second}, {waitedAt: 3, want: 4 * time.Second},
			{waitedAt: 7, want: 8 * time.Second}, {waitedAt: 15, want: 8 * time.Second},
		}},
		{"an established stream ends: 1 s through the window, then doubling", []step{
			{session: [2]float64{0, 5}, established: true, waitedAt: 6, want: time.Second},
			{waitedAt: 7, want: time.Second}, {waitedAt: 14.9, want: time.Second},
			{waitedAt: 15, want: 2 * time.Second}, {waitedAt: 17, want: 4 * time.Second},
		}},
		{"a flapping stream opens one window per healthy-session period", []step{
			{session: [2]float64{0, 2}, established: true, waitedAt: 3, want: time.Second},
			{waitedAt: 13, want: 2 * time.Second},
			{session: [2]float64{13, 15}, established: true, waitedAt: 16, want: 4 * time.Second}, // within 30 s of the window: none
			{session: [2]float64{16, 40}, established: true, waitedAt: 41, want: time.Second},     // a new window
		}},
		{"a stream refused before its map opens no window", []step{
			{session: [2]float64{0, 2}, waitedAt: 3, want: 2 * time.Second},
		}},
		{"a healthy session starts over", []step{
			{waitedAt: 1, want: 2 * time.Second}, {waitedAt: 3, want: 4 * time.Second},
			{session: [2]float64{3, 40}, waitedAt: 41, want: 2 * time.Second},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := backoffPolicy{min: time.Second, max: 8 * time.Second, cur: time.Second}
			for i, s := range tt.steps {
				if s.session != [2]float64{} || s.established {
					b.ended(at(s.session[0]), at(s.session[1]), s.established)
				}
				b.waited(at(s.waitedAt))
				if b.cur != s.want {
					t.Fatalf("step %d: backoff %v, want %v", i, b.cur, s.want)
				}
			}
		})
	}
}

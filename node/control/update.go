package control

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/node/identity"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

// ErrOtherCA marks a coordinator whose certificate the node's enrolment CA
// does not vouch for: another overlay, not this node's.
var ErrOtherCA = errors.New("coordinator of another overlay")

// UpdateRequest is what Update needs: the node's wishes, and what it
// leaves unset stays as registered.
type UpdateRequest struct {
	Enrolment   identity.Enrolment // the CA and TLS name to verify
	Coordinator string             // where to ask; empty: Enrolment.Coordinator
	PrivateKey  key.Private
	SetName     bool
	Name        string // with SetName; empty: the default (hostname)
	SetRoutes   bool
	Routes      []netip.Prefix // with SetRoutes: the full list
	Hostname    string         // empty: kept
	// Dial connects to the coordinator (nil: a plain TCP dial).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// Update asks the coordinator to change the node's registration. Its
// errors wrap ErrRefused when the coordinator said no (retrying will not
// help) and ErrOtherCA when it is not this node's coordinator; others
// are worth retrying.
func Update(ctx context.Context, req UpdateRequest) (*api.JoinResponse, error) {
	addr := req.Coordinator
	if addr == "" {
		addr = req.Enrolment.Coordinator
	}
	tc, err := jointoken.ClientConfig([]byte(req.Enrolment.CAPEM), req.Enrolment.ServerName)
	if err != nil {
		return nil, fmt.Errorf("enrolment CA: %w", err)
	}
	var verifyErr atomic.Pointer[error]
	tc = recordVerify(tc, &verifyErr)
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}
	if req.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(req.Dial))
	}
	target, topts, err := Target(addr)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target, append(opts, topts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	ur := &api.UpdateRequest{SetName: req.SetName, Name: req.Name, SetRoutes: req.SetRoutes, Routes: RouteStrings(req.Routes), Hostname: req.Hostname}
	resp, err := update(ctx, api.NewControlClient(conn), req.PrivateKey, ur)
	if err == nil {
		return resp, nil
	}
	if ve := verifyErr.Load(); ve != nil {
		return nil, fmt.Errorf("%w: %s presents a certificate that the CA this node enrolled with does not vouch for (%v)", ErrOtherCA, addr, *ve)
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Internal, codes.ResourceExhausted, codes.Unknown:
		return nil, fmt.Errorf("update at %s: %s", addr, describe(err))
	}
	return nil, fmt.Errorf("%w by %s: %s", ErrRefused, addr, describe(err))
}

// update runs the Update stream: the key proof, then the request.
func update(ctx context.Context, cl api.ControlClient, priv key.Private, ur *api.UpdateRequest) (*api.JoinResponse, error) {
	return oneShot(ctx, cl.Update, priv, api.AuthUpdate, ur.Hostname, &api.ClientMessage{Msg: &api.ClientMessage_Update{Update: ur}})
}

// recordVerify returns tc verifying the server's chain itself (the same
// checks crypto/tls makes: chain to tc.RootCAs, name tc.ServerName) so
// that a failure can be told apart from an unreachable server: gRPC
// reports both as Unavailable.
func recordVerify(tc *tls.Config, failed *atomic.Pointer[error]) *tls.Config {
	tc = tc.Clone()
	roots, name := tc.RootCAs, tc.ServerName
	tc.InsecureSkipVerify = true // verified below, with the same roots and name
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verifyChain(cs.PeerCertificates, roots, name)
		if err != nil {
			failed.Store(&err)
		}
		return err
	}
	return tc
}

func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, name string) error {
	if len(certs) == 0 {
		return errors.New("server sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name})
	return err
}

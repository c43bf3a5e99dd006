package relay

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"golang.org/x/net/http/httpguts"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/nacl/secretbox"

	"github.com/edgewire/edgewire/internal/dhkey"
	"github.com/edgewire/edgewire/types/key"
)

// handshakeTimeout bounds the Upgrade plus the key exchange.
const handshakeTimeout = 5 * time.Second

const (
	meshLabel    = "edgewire-mesh-v1"
	meshAckLabel = "edgewire-mesh-v1-ack"
	boxNonceLen  = 24
	// clientInfoMin is a ClientInfo with an empty ticket.
	clientInfoMin = 32 + boxNonceLen + secretbox.Overhead + nonceLen
	serverInfoLen = boxNonceLen + secretbox.Overhead + nonceLen + 1 + 2
	meshInfoLen   = 32 + sha256.Size
	meshAckLen    = 2 + sha256.Size
)

// refusal is a handshake failure whose text the relay tells the peer
// (in frameRefused) before closing.
type refusal string

func (r refusal) Error() string { return string(r) }

// parsedURL is a relay URL split for dialing.
type parsedURL struct {
	tls  bool
	host string // host:port
	name string // host, for SNI
	path string
}

func parseRelayURL(raw string) (parsedURL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return parsedURL{}, fmt.Errorf("relay URL %q: %w", raw, err)
	}
	var p parsedURL
	port := ""
	switch u.Scheme {
	case "https":
		p.tls, port = true, "443"
	case "http":
		port = "80"
	default:
		return parsedURL{}, fmt.Errorf("relay URL %q: scheme must be http or https", raw)
	}
	if u.Hostname() == "" {
		return parsedURL{}, fmt.Errorf("relay URL %q: no host", raw)
	}
	if u.Port() != "" {
		port = u.Port()
	}
	p.name = u.Hostname()
	p.host = net.JoinHostPort(p.name, port)
	p.path = u.EscapedPath()
	if p.path == "" || p.path == "/" {
		p.path = relayPath
	}
	return p, nil
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// dialUpgrade connects to a relay and performs the HTTP Upgrade, sending
// hello (nodes; nil for mesh relays). The caller owns the returned conn
// (deadline set to the ctx deadline, if any) and reads from br, which may
// already hold the first frames. Nodes offer featureBatch; batch reports
// whether the relay took it.
func dialUpgrade(ctx context.Context, dial dialFunc, u parsedURL, tlsConf *tls.Config, hello *clientHello) (nc net.Conn, br *bufio.Reader, batch bool, err error) {
	nc, br, h, err := upgradeConn(ctx, dial, u, tlsConf, hello)
	if err != nil {
		return nil, nil, false, err
	}
	return nc, br, hello != nil && hello.batch && httpguts.HeaderValuesContainsToken(h.Values(featuresHeader), featureBatch), nil
}

func upgradeConn(ctx context.Context, dial dialFunc, u parsedURL, tlsConf *tls.Config, hello *clientHello) (net.Conn, *bufio.Reader, http.Header, error) {
	if dial == nil {
		dial = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	nc, err := dial(ctx, "tcp", u.host)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("dial %s: %w", u.host, err)
	}
	// The TCP conn, not nc: nc becomes the TLS conn below while this may
	// run (a deadline on the TCP conn ends the TLS conn's reads too).
	raw := nc
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		nc.SetDeadline(d)
	}
	if u.tls {
		// Identity comes from the relay key proven in the handshake, not
		// from the certificate: relays may use self-signed certificates,
		// and TLS is here to pass middleboxes and hide metadata.
		conf := &tls.Config{InsecureSkipVerify: true}
		if tlsConf != nil {
			conf = tlsConf.Clone()
		}
		if conf.ServerName == "" {
			conf.ServerName = u.name
		}
		tc := tls.Client(nc, conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, nil, nil, fmt.Errorf("tls to %s: %w", u.host, err)
		}
		nc = tc
	}
	req := "GET " + u.path + " HTTP/1.1\r\nHost: " + u.host + "\r\nConnection: Upgrade\r\nUpgrade: " + upgradeProto +
		"\r\n" + versionHeader + ": " + strconv.Itoa(ProtocolVersion) + "\r\n"
	if hello != nil {
		req += clientHeader + ": " + hello.header() + "\r\n"
		if hello.batch {
			req += featuresHeader + ": " + featureBatch + "\r\n"
		}
	}
	req += "\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		return nil, nil, nil, fmt.Errorf("upgrade request to %s: %w", u.host, err)
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, nil, nil, fmt.Errorf("upgrade response from %s: %w", u.host, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || !strings.EqualFold(resp.Header.Get("Upgrade"), upgradeProto) {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		nc.Close()
		return nil, nil, nil, fmt.Errorf("%s refused the upgrade: %s: %q", u.host, resp.Status, strings.TrimSpace(string(body)))
	}
	return nc, br, resp.Header, nil
}

// clientHello is what a node announces in its Upgrade request (the
// clientHeader): its key and a fresh nonce, so the relay can prove its
// own key in its first frame.
type clientHello struct {
	node   Key
	cnonce [nonceLen]byte
	batch  bool // offer featureBatch (tests turn it off to play an older node)
}

func newClientHello(node Key) *clientHello {
	return &clientHello{node: node, cnonce: [nonceLen]byte(newNonce(nonceLen)), batch: true}
}

func (h *clientHello) header() string {
	return base64.StdEncoding.EncodeToString(append(h.node[:], h.cnonce[:]...))
}

// parseClientHello reads the clientHeader values of a request.
func parseClientHello(vs []string) (clientHello, error) {
	if len(vs) != 1 {
		return clientHello{}, fmt.Errorf("%d %s headers, want one", len(vs), clientHeader)
	}
	b, err := base64.StdEncoding.DecodeString(vs[0])
	if err != nil || len(b) != 32+nonceLen {
		return clientHello{}, fmt.Errorf("malformed %s header: want base64 of node key (32) and nonce (32)", clientHeader)
	}
	h := clientHello{node: Key(b[:32]), cnonce: [nonceLen]byte(b[32:])}
	if dhkey.CheckPublic(h.node) != nil {
		return clientHello{}, fmt.Errorf("bad node key in %s header: %w", clientHeader, dhkey.ErrLowOrder)
	}
	return h, nil
}

// handshakeKey derives the key for purpose p of the handshake between
// relay and node (the agreement of priv and pub, one from each), bound
// to the transcript: relay key, node key, client nonce, server nonce.
func handshakeKey(priv key.Private, pub Key, p dhkey.Purpose, relay, node Key, cnonce, snonce *[nonceLen]byte) ([dhkey.Size]byte, error) {
	return dhkey.Derive(priv, pub, p, relay[:], node[:], cnonce[:], snonce[:])
}

// readServerKey reads frameServerKey and checks the relay's version and
// key against want; it returns the server nonce and the relay's proof.
func readServerKey(br *bufio.Reader, want Key) (snonce, proof [nonceLen]byte, err error) {
	t, p, err := readFrame(br, nil, maxHandshakePayload)
	if err != nil {
		return snonce, proof, fmt.Errorf("read server key: %w", err)
	}
	if t == frameServerKey && len(p) > len(serverMagic) && string(p[:len(serverMagic)]) == serverMagic && p[len(serverMagic)] != ProtocolVersion {
		return snonce, proof, fmt.Errorf("relay speaks protocol version %d, this client speaks %d", p[len(serverMagic)], ProtocolVersion)
	}
	if t != frameServerKey || len(p) != serverKeyLen || string(p[:len(serverMagic)]) != serverMagic {
		return snonce, proof, fmt.Errorf("relay sent no valid server key frame (type %#x, %d bytes)", byte(t), len(p))
	}
	p = p[len(serverMagic)+1:]
	if got := Key(p[:32]); got != want {
		return snonce, proof, fmt.Errorf("%w: relay has %x, relay map says %x", ErrWrongServerKey, got[:8], want[:8])
	}
	copy(snonce[:], p[32:])
	copy(proof[:], p[32+nonceLen:])
	return snonce, proof, nil
}

// readReply reads the handshake reply, turning frameRefused into an
// error wrapping ErrRefused.
func readReply(br *bufio.Reader, want frameType, wantLen int) ([]byte, error) {
	t, p, err := readFrame(br, nil, maxHandshakePayload)
	if err != nil {
		return nil, fmt.Errorf("read handshake reply: %w", err)
	}
	if t == frameRefused {
		if len(p) > maxRefusalLen {
			p = p[:maxRefusalLen]
		}
		return nil, fmt.Errorf("%w: %q", ErrRefused, p)
	}
	if t != want || len(p) != wantLen {
		return nil, fmt.Errorf("relay sent no valid handshake reply (type %#x, %d bytes)", byte(t), len(p))
	}
	return p, nil
}

// clientHandshake authenticates the relay to the node and then the node
// to the relay, after hello went out in the Upgrade request; it returns
// the relay's keepalive interval. Nothing sealed is sent before the relay
// has proven serverKey.
func clientHandshake(br *bufio.Reader, bw *bufio.Writer, serverKey Key, priv key.Private, hello *clientHello, ticket []byte) (time.Duration, error) {
	snonce, proof, err := readServerKey(br, serverKey)
	if err != nil {
		return 0, err
	}
	pub := hello.node
	derive := func(p dhkey.Purpose) ([dhkey.Size]byte, error) {
		k, err := handshakeKey(priv, serverKey, p, serverKey, pub, &hello.cnonce, &snonce)
		if err != nil {
			return k, fmt.Errorf("%w: relay key: %w", ErrWrongServerKey, err)
		}
		return k, nil
	}
	kp, err := derive(dhkey.RelayServerProof)
	if err != nil {
		return 0, err
	}
	if want := dhkey.MAC(kp, []byte(serverProofLabel)); !dhkey.Equal(proof[:], want[:]) {
		return 0, fmt.Errorf("%w: relay could not prove its key", ErrWrongServerKey)
	}
	kc, err := derive(dhkey.RelayClient)
	if err != nil {
		return 0, err
	}
	var bn [boxNonceLen]byte
	copy(bn[:], newNonce(boxNonceLen))
	plain := append(snonce[:], ticket...)
	if err := writeFrame(bw, frameClientInfo, pub[:], bn[:], secretbox.Seal(nil, plain, &bn, &kc)); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, fmt.Errorf("send client info: %w", err)
	}
	p, err := readReply(br, frameServerInfo, serverInfoLen)
	if err != nil {
		return 0, err
	}
	ks, err := derive(dhkey.RelayServerInfo)
	if err != nil {
		return 0, err
	}
	copy(bn[:], p[:boxNonceLen])
	opened, ok := secretbox.Open(nil, p[boxNonceLen:], &bn, &ks)
	if !ok || subtle.ConstantTimeCompare(opened[:nonceLen], snonce[:]) != 1 {
		return 0, fmt.Errorf("%w: relay could not prove its key", ErrWrongServerKey)
	}
	if opened[nonceLen] != ProtocolVersion {
		return 0, fmt.Errorf("relay speaks protocol version %d, this client speaks %d", opened[nonceLen], ProtocolVersion)
	}
	return time.Duration(binary.BigEndian.Uint16(opened[nonceLen+1:])) * time.Second, nil
}

// meshMAC is the mesh proof of the relay that dials (ack false) or of the
// relay that serves (ack true, with its keepalive).
func meshMAC(meshKey []byte, ack bool, snonce [nonceLen]byte, server, client Key, ka []byte) []byte {
	label := meshLabel
	if ack {
		label = meshAckLabel
	}
	m := hmac.New(sha256.New, meshKey)
	m.Write([]byte(label))
	m.Write(snonce[:])
	m.Write(server[:])
	m.Write(client[:])
	m.Write(ka)
	return m.Sum(nil)
}

// meshHandshake authenticates this relay (own) as a mesh client of the
// relay serverKey; both prove the mesh key. It returns the serving
// relay's keepalive interval.
func meshHandshake(br *bufio.Reader, bw *bufio.Writer, serverKey, own Key, meshKey []byte) (time.Duration, error) {
	snonce, _, err := readServerKey(br, serverKey)
	if err != nil {
		return 0, err
	}
	if err := writeFrame(bw, frameMeshInfo, own[:], meshMAC(meshKey, false, snonce, serverKey, own, nil)); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, fmt.Errorf("send mesh info: %w", err)
	}
	p, err := readReply(br, frameMeshAck, meshAckLen)
	if err != nil {
		return 0, err
	}
	if !hmac.Equal(p[2:], meshMAC(meshKey, true, snonce, serverKey, own, p[:2])) {
		return 0, errors.New("relay could not prove the mesh key")
	}
	return time.Duration(binary.BigEndian.Uint16(p[:2])) * time.Second, nil
}

// peerInfo is who completed a server-side handshake.
type peerInfo struct {
	key     Key
	mesh    bool      // a mesh relay, key is its relay key
	expires time.Time // ticket expiry (clients)
	// seq orders the handshakes of nodes: taken just before the relay
	// answers, so a node that connects again after a handshake it saw
	// complete always gets a larger one (see Server.addClient).
	seq uint64
}

// serverHandshake runs the relay side of the handshake on a fresh
// connection: it sends frameServerKey (with its proof for a node that
// sent hello), checks the peer's proof, and answers. On a refusal it
// tells the peer why; the caller closes.
func (s *Server) serverHandshake(br *bufio.Reader, bw *bufio.Writer, hello *clientHello) (peerInfo, error) {
	var snonce, proof [nonceLen]byte
	copy(snonce[:], newNonce(nonceLen))
	if hello != nil {
		k, err := handshakeKey(s.cfg.PrivateKey, hello.node, dhkey.RelayServerProof, s.pub, hello.node, &hello.cnonce, &snonce)
		if err != nil {
			return peerInfo{}, err // parseClientHello checked the key
		}
		proof = dhkey.MAC(k, []byte(serverProofLabel))
	}
	if err := writeFrame(bw, frameServerKey, []byte(serverMagic), []byte{ProtocolVersion}, s.pub[:], snonce[:], proof[:]); err != nil {
		return peerInfo{}, err
	}
	if err := bw.Flush(); err != nil {
		return peerInfo{}, err
	}
	pi, err := s.checkHello(br, bw, hello, &snonce)
	var r refusal
	if errors.As(err, &r) {
		writeFrame(bw, frameRefused, []byte(r))
		bw.Flush()
	}
	return pi, err
}

func (s *Server) checkHello(br *bufio.Reader, bw *bufio.Writer, hello *clientHello, snonce *[nonceLen]byte) (peerInfo, error) {
	t, p, err := readFrame(br, nil, maxHandshakePayload)
	if err != nil {
		return peerInfo{}, err
	}
	switch {
	case t == frameClientInfo && hello != nil:
		return s.checkClient(bw, p, hello, snonce)
	case t == frameClientInfo:
		return peerInfo{}, refusal("client info without the " + clientHeader + " header (a client of protocol version 1?)")
	case t == frameMeshInfo && hello == nil:
		return s.checkMesh(bw, p, *snonce)
	}
	return peerInfo{}, refusal(fmt.Sprintf("unexpected frame type %#x in handshake", byte(t)))
}

func (s *Server) checkClient(bw *bufio.Writer, p []byte, hello *clientHello, snonce *[nonceLen]byte) (peerInfo, error) {
	if len(p) < clientInfoMin {
		return peerInfo{}, refusal(fmt.Sprintf("client info too short (%d bytes)", len(p)))
	}
	node := Key(p[:32])
	if node != hello.node {
		return peerInfo{}, refusal("client info names another key than the " + clientHeader + " header")
	}
	derive := func(pp dhkey.Purpose) ([dhkey.Size]byte, error) {
		return handshakeKey(s.cfg.PrivateKey, node, pp, s.pub, node, &hello.cnonce, snonce)
	}
	kc, err := derive(dhkey.RelayClient)
	if err != nil {
		return peerInfo{}, refusal("bad node key")
	}
	bn := [boxNonceLen]byte(p[32 : 32+boxNonceLen])
	plain, ok := secretbox.Open(nil, p[32+boxNonceLen:], &bn, &kc)
	if !ok || subtle.ConstantTimeCompare(plain[:nonceLen], snonce[:]) != 1 {
		return peerInfo{}, refusal("node key proof failed")
	}
	now := s.now()
	tk, err := VerifyTicket(s.cfg.TicketKey, plain[nonceLen:], now)
	if err != nil {
		return peerInfo{}, refusal(err.Error())
	}
	if tk.Node != node {
		return peerInfo{}, refusal("ticket is for another node")
	}
	if s.revokedUntil(node, now) {
		return peerInfo{}, refusal("node revoked")
	}
	ks, err := derive(dhkey.RelayServerInfo)
	if err != nil {
		return peerInfo{}, refusal("bad node key")
	}
	var reply [nonceLen + 1 + 2]byte
	copy(reply[:], snonce[:])
	reply[nonceLen] = ProtocolVersion
	binary.BigEndian.PutUint16(reply[nonceLen+1:], uint16(s.cfg.KeepAlive/time.Second))
	copy(bn[:], newNonce(boxNonceLen))
	if err := writeFrame(bw, frameServerInfo, bn[:], secretbox.Seal(nil, reply[:], &bn, &ks)); err != nil {
		return peerInfo{}, err
	}
	return peerInfo{key: node, expires: tk.Expires, seq: s.handshakes.Add(1)}, bw.Flush()
}

func (s *Server) checkMesh(bw *bufio.Writer, p []byte, snonce [nonceLen]byte) (peerInfo, error) {
	if s.cfg.MeshKey == nil {
		return peerInfo{}, refusal("mesh not enabled on this relay")
	}
	if len(p) != meshInfoLen {
		return peerInfo{}, refusal(fmt.Sprintf("mesh info is %d bytes, want %d", len(p), meshInfoLen))
	}
	peer := Key(p[:32])
	if !hmac.Equal(p[32:], meshMAC(s.cfg.MeshKey, false, snonce, s.pub, peer, nil)) {
		return peerInfo{}, refusal("bad mesh key")
	}
	if peer == s.pub {
		return peerInfo{}, refusal("mesh peer has this relay's key")
	}
	var ka [2]byte
	binary.BigEndian.PutUint16(ka[:], uint16(s.cfg.KeepAlive/time.Second))
	if err := writeFrame(bw, frameMeshAck, ka[:], meshMAC(s.cfg.MeshKey, true, snonce, s.pub, peer, ka[:])); err != nil {
		return peerInfo{}, err
	}
	return peerInfo{key: peer, mesh: true}, bw.Flush()
}

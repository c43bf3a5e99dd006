package relay

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of ServerConfig.
const (
	DefaultQueueLen  = 1024
	DefaultRateBytes = 50e6
	DefaultRateBurst = 8 << 20
	DefaultKeepAlive = 30 * time.Second
	// meshQueueLen bounds packets waiting on one outbound mesh link; it
	// carries many clients' traffic.
	meshQueueLen = 4096
	// writeTimeout bounds one batch of writes to a peer that stopped
	// reading.
	writeTimeout = 15 * time.Second
)

// Drop reasons, the keys of ServerStats.Drops.
const (
	dropNoRoute = iota
	dropQueueFull
	dropRateLimited
	dropBadFrame
	numDrops
)

var dropNames = [numDrops]string{"no_route", "queue_full", "rate_limited", "bad_frame"}

// ServerConfig configures a relay. Zero values take the defaults above.
type ServerConfig struct {
	PrivateKey Key               // relay identity (Curve25519); required
	TicketKey  ed25519.PublicKey // coordinator's ticket verification key; required
	MeshKey    []byte            // shared by the relays of a mesh, >= 32 bytes; nil: no mesh
	MeshPeers  []MeshPeer        // the other relays of the mesh; an entry with this relay's own key is skipped
	QueueLen   int               // packets queued per client before the oldest is dropped
	RateBytes  float64           // sustained bytes/s a client may send; +Inf: no limit (see RateFromMbit)
	RateBurst  int               // burst bytes a client may send; >= 64 KiB
	KeepAlive  time.Duration     // keepalive interval on idle connections, 1s..65535s
	Logger     *slog.Logger
	Now        func() time.Time
	// DialMesh dials a mesh peer's URL host:port (nil: net.Dialer; TLS
	// when the URL is https, with InsecureSkipVerify since identity comes
	// from the relay key).
	DialMesh func(ctx context.Context, network, addr string) (net.Conn, error)
}

// MeshPeer is another relay of the mesh.
type MeshPeer struct {
	URL string // "https://host:port/relay"
	Key Key    // its relay public key
}

// ServerStats is a snapshot of a relay's counters.
type ServerStats struct {
	Clients     int // nodes connected here
	MeshLinks   int // outbound mesh links up
	MeshClients int // mesh relays connected here
	PacketsIn   uint64
	PacketsOut  uint64
	BytesIn     uint64
	BytesOut    uint64
	Refused     uint64            // handshakes that failed
	Drops       map[string]uint64 // packets (bad_frame: connections) dropped, by reason
}

// Server is a relay. Serve it with ServeHTTP and keep Run running.
type Server struct {
	cfg        ServerConfig
	pub        Key
	log        *slog.Logger
	now        func() time.Time
	peers      []meshPeer
	sweepEvery time.Duration // ticket expiry sweeps; tests shorten it

	handlers sync.WaitGroup // ServeHTTP calls holding a connection

	packetsIn, packetsOut, bytesIn, bytesOut, refused atomic.Uint64
	drops                                             [numDrops]atomic.Uint64

	mu        sync.RWMutex          // guards the fields below
	closed    bool                  // Run ended; refuse new connections
	conns     map[net.Conn]struct{} // every hijacked connection, to close on shutdown
	clients   map[Key]*sconn        // local nodes by node key
	meshConns map[Key]*sconn        // mesh relays dialled in here, by relay key
	remote    map[Key]*meshLink     // node key -> outbound link to the relay holding it
	links     int                   // outbound mesh links up
	revoked   map[Key]time.Time     // node -> refused until
}

type meshPeer struct {
	MeshPeer
	u parsedURL
}

// NewServer validates cfg and returns a relay.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.PrivateKey == (Key{}) {
		return nil, errors.New("relay: PrivateKey is required")
	}
	if len(cfg.TicketKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("relay: TicketKey is %d bytes, want an Ed25519 public key (%d)", len(cfg.TicketKey), ed25519.PublicKeySize)
	}
	if cfg.MeshKey != nil && len(cfg.MeshKey) < 32 {
		return nil, fmt.Errorf("relay: MeshKey is %d bytes, want at least 32", len(cfg.MeshKey))
	}
	if cfg.MeshKey == nil && len(cfg.MeshPeers) > 0 {
		return nil, errors.New("relay: MeshPeers given without a MeshKey")
	}
	switch {
	case cfg.QueueLen < 0:
		return nil, fmt.Errorf("relay: QueueLen %d is negative", cfg.QueueLen)
	case cfg.QueueLen == 0:
		cfg.QueueLen = DefaultQueueLen
	}
	switch {
	case cfg.RateBytes < 0 || math.IsNaN(cfg.RateBytes):
		return nil, fmt.Errorf("relay: RateBytes %v is not a rate", cfg.RateBytes)
	case cfg.RateBytes == 0:
		cfg.RateBytes = DefaultRateBytes
	}
	switch {
	case cfg.RateBurst == 0:
		cfg.RateBurst = DefaultRateBurst
	case cfg.RateBurst < maxPacketSize:
		return nil, fmt.Errorf("relay: RateBurst %d is below the largest packet (%d)", cfg.RateBurst, maxPacketSize)
	}
	switch {
	case cfg.KeepAlive == 0:
		cfg.KeepAlive = DefaultKeepAlive
	case cfg.KeepAlive < time.Second || cfg.KeepAlive > 65535*time.Second:
		return nil, fmt.Errorf("relay: KeepAlive %v outside 1s..65535s", cfg.KeepAlive)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{
		cfg:        cfg,
		pub:        PublicKey(cfg.PrivateKey),
		log:        cfg.Logger,
		now:        cfg.Now,
		sweepEvery: time.Second,
		conns:      map[net.Conn]struct{}{},
		clients:    map[Key]*sconn{},
		meshConns:  map[Key]*sconn{},
		remote:     map[Key]*meshLink{},
		revoked:    map[Key]time.Time{},
	}
	for _, p := range cfg.MeshPeers {
		if p.Key == s.pub {
			continue
		}
		if p.Key == (Key{}) {
			return nil, fmt.Errorf("relay: mesh peer %q has no key", p.URL)
		}
		u, err := parseRelayURL(p.URL)
		if err != nil {
			return nil, fmt.Errorf("relay: mesh peer: %w", err)
		}
		s.peers = append(s.peers, meshPeer{p, u})
	}
	return s, nil
}

// PublicKey is the relay's public key.
func (s *Server) PublicKey() Key { return s.pub }

// Run dials the mesh peers and sweeps expired tickets and revocations
// until ctx ends; then it closes every connection and returns nil once
// all are gone. Call it once.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var links sync.WaitGroup
	for _, p := range s.peers {
		links.Go(func() { s.runMeshLink(ctx, p) })
	}
	t := time.NewTicker(s.sweepEvery)
	defer t.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-t.C:
			s.sweep()
		}
	}
	s.mu.Lock()
	s.closed = true
	for nc := range s.conns {
		nc.Close()
	}
	s.mu.Unlock()
	links.Wait()
	s.handlers.Wait()
	return nil
}

// sweep drops clients whose ticket expired and forgets old revocations.
func (s *Server) sweep() {
	now := s.now()
	var expired []*sconn
	s.mu.Lock()
	for k, until := range s.revoked {
		if !now.Before(until) {
			delete(s.revoked, k)
		}
	}
	for _, c := range s.clients {
		if !now.Before(time.Unix(c.expires.Load(), 0)) {
			expired = append(expired, c)
		}
	}
	s.mu.Unlock()
	for _, c := range expired {
		c.log.Info("relay: ticket expired; dropping client")
		c.close()
	}
}

// Revoke drops the node's connection at once and refuses it until until.
// Mesh peers are told and do the same.
func (s *Server) Revoke(node Key, until time.Time) { s.revoke(node, until, true) }

func (s *Server) revoke(node Key, until time.Time, propagate bool) {
	s.mu.Lock()
	if cur, ok := s.revoked[node]; !ok || until.After(cur) {
		s.revoked[node] = until
	}
	c := s.clients[node]
	if propagate {
		for _, m := range s.meshConns {
			m.pushCtrl(revokeItem(node, until))
		}
	}
	s.mu.Unlock()
	if c != nil {
		c.log.Info("relay: node revoked; dropping client", "until", until)
		c.close()
	}
}

func revokeItem(node Key, until time.Time) item {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, uint64(until.Unix()))
	return item{typ: frameRevoke, k1: node, pkt: b}
}

func (s *Server) revokedUntil(node Key, now time.Time) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	until, ok := s.revoked[node]
	return ok && now.Before(until)
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() ServerStats {
	st := ServerStats{
		PacketsIn:  s.packetsIn.Load(),
		PacketsOut: s.packetsOut.Load(),
		BytesIn:    s.bytesIn.Load(),
		BytesOut:   s.bytesOut.Load(),
		Refused:    s.refused.Load(),
		Drops:      make(map[string]uint64, numDrops),
	}
	for i := range s.drops {
		st.Drops[dropNames[i]] = s.drops[i].Load()
	}
	s.mu.RLock()
	st.Clients, st.MeshClients, st.MeshLinks = len(s.clients), len(s.meshConns), s.links
	s.mu.RUnlock()
	return st
}

func (s *Server) drop(reason int) { s.drops[reason].Add(1) }

// ServeHTTP serves the relay: GET /relay/probe answers "ok" (latency
// probes), /relay with "Upgrade: edgewire-relay" becomes a relay
// connection for as long as it lives; anything else is 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case probePath:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, "ok")
		return
	case relayPath:
	default:
		http.NotFound(w, r)
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), upgradeProto) {
		http.Error(w, "edgewire relay: expected Upgrade: "+upgradeProto, http.StatusUpgradeRequired)
		return
	}
	if v := r.Header.Get(versionHeader); v != "" && v != strconv.Itoa(ProtocolVersion) {
		http.Error(w, fmt.Sprintf("edgewire relay: unsupported protocol version %q, this relay speaks %d", v, ProtocolVersion), http.StatusBadRequest)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "edgewire relay: needs HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "edgewire relay: shutting down", http.StatusServiceUnavailable)
		return
	}
	s.handlers.Add(1)
	s.mu.Unlock()
	defer s.handlers.Done()
	nc, brw, err := hj.Hijack()
	if err != nil {
		s.log.Debug("relay: hijack failed", "err", err)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.conns[nc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, nc)
		s.mu.Unlock()
		nc.Close()
	}()
	// Keep what the HTTP server buffered; read through a bigger buffer.
	s.serveConn(nc, bufio.NewReaderSize(brw.Reader, 64<<10))
}

// serveConn runs one upgraded connection until it ends.
func (s *Server) serveConn(nc net.Conn, br *bufio.Reader) {
	log := s.log.With("remote", nc.RemoteAddr().String())
	nc.SetDeadline(time.Now().Add(handshakeTimeout))
	bw := bufio.NewWriterSize(nc, 4096)
	io.WriteString(bw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: "+upgradeProto+"\r\nConnection: Upgrade\r\n\r\n")
	pi, err := s.serverHandshake(br, bw)
	if err != nil {
		s.refused.Add(1)
		log.Debug("relay: handshake failed", "err", err)
		return
	}
	nc.SetDeadline(time.Time{})
	c := &sconn{
		s:    s,
		nc:   nc,
		key:  pi.key,
		mesh: pi.mesh,
		done: make(chan struct{}),
	}
	if pi.mesh {
		c.log = log.With("mesh_peer", shortKey(pi.key))
		c.q = newQueue(1) // control frames only
		if !s.addMeshConn(c) {
			return
		}
		defer s.removeMeshConn(c)
	} else {
		c.log = log.With("node", shortKey(pi.key))
		c.q = newQueue(s.cfg.QueueLen)
		c.lim = rate.NewLimiter(rate.Limit(s.cfg.RateBytes), s.cfg.RateBurst)
		c.expires.Store(pi.expires.Unix())
		if !s.addClient(c) {
			return
		}
		defer s.removeClient(c)
	}
	c.log.Debug("relay: connected")
	var writer sync.WaitGroup
	writer.Go(func() {
		err := writeLoop(nc, c.q, c.done, s.cfg.KeepAlive, s.countOut)
		if err != nil {
			c.log.Debug("relay: write failed", "err", err)
		}
		c.close()
	})
	err = c.readLoop(br)
	c.close()
	writer.Wait()
	c.log.Debug("relay: disconnected", "err", err)
}

func (s *Server) countOut(it *item) {
	if it.typ == frameRecvPacket || it.typ == frameForwardPacket {
		s.packetsOut.Add(1)
		s.bytesOut.Add(uint64(len(it.pkt)))
	}
}

func (s *Server) addClient(c *sconn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if until, ok := s.revoked[c.key]; ok && s.now().Before(until) {
		return false // revoked between handshake and here
	}
	old := s.clients[c.key]
	s.clients[c.key] = c
	if old != nil {
		old.log.Debug("relay: replaced by a new connection of the same node")
		old.close()
		return true
	}
	for _, m := range s.meshConns {
		m.pushCtrl(item{typ: framePeerPresent, k1: c.key})
	}
	return true
}

func (s *Server) removeClient(c *sconn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clients[c.key] != c {
		return // replaced
	}
	delete(s.clients, c.key)
	for _, m := range s.meshConns {
		m.pushCtrl(item{typ: framePeerGone, k1: c.key})
	}
}

// addMeshConn registers a mesh relay dialled in here and queues a
// snapshot: every local node and every live revocation.
func (s *Server) addMeshConn(c *sconn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if old := s.meshConns[c.key]; old != nil {
		old.close()
	}
	s.meshConns[c.key] = c
	for k := range s.clients {
		c.q.pushCtrl(item{typ: framePeerPresent, k1: k}, true)
	}
	now := s.now()
	for k, until := range s.revoked {
		if now.Before(until) {
			c.q.pushCtrl(revokeItem(k, until), true)
		}
	}
	return true
}

func (s *Server) removeMeshConn(c *sconn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.meshConns[c.key] == c {
		delete(s.meshConns, c.key)
	}
}

// forward routes a packet from src to dst: to a local node, else (unless
// it came from the mesh: one hop only) over the mesh link to the relay
// holding dst.
func (s *Server) forward(src, dst Key, pkt []byte, fromMesh bool) {
	s.mu.RLock()
	c := s.clients[dst]
	var l *meshLink
	if c == nil && !fromMesh {
		l = s.remote[dst]
	}
	s.mu.RUnlock()
	var q *queue
	var it item
	switch {
	case c != nil:
		q, it = c.q, newPacketItem(frameRecvPacket, src, Key{}, pkt)
	case l != nil:
		q, it = l.q, newPacketItem(frameForwardPacket, src, dst, pkt)
	default:
		s.drop(dropNoRoute)
		return
	}
	if q.pushPacket(it) {
		s.drop(dropQueueFull)
	}
}

// sconn is one connection served here: a node, or a mesh relay that
// dialled in.
type sconn struct {
	s       *Server
	nc      net.Conn
	key     Key
	mesh    bool
	log     *slog.Logger
	q       *queue
	lim     *rate.Limiter // bytes a node may send; nil for mesh relays
	expires atomic.Int64  // ticket expiry, unix seconds (nodes)

	closeOnce sync.Once
	done      chan struct{} // closed by close
}

func (c *sconn) close() {
	c.closeOnce.Do(func() {
		close(c.done)
		c.nc.Close()
		c.q.close()
	})
}

// pushCtrl queues a control frame; a peer too slow to take them is
// dropped (a mesh peer reconnects and gets a fresh snapshot).
func (c *sconn) pushCtrl(it item) {
	if !c.q.pushCtrl(it, false) {
		c.log.Warn("relay: control queue overflow; dropping connection")
		c.close()
	}
}

// errBadFrame marks protocol violations that close the connection.
var errBadFrame = errors.New("bad frame")

func badFrame(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadFrame, fmt.Sprintf(format, args...))
}

func (c *sconn) readLoop(br *bufio.Reader) error {
	s := c.s
	dl := newReadDeadline(c.nc, s.cfg.KeepAlive)
	buf := make([]byte, pktBufSize+64)
	for {
		dl.refresh()
		t, p, err := readFrame(br, buf)
		if err != nil {
			if errors.Is(err, errFrameTooLarge) {
				s.drop(dropBadFrame)
			}
			return err
		}
		if cap(p) > cap(buf) {
			buf = p[:0]
		}
		if err := c.handle(t, p); err != nil {
			if errors.Is(err, errBadFrame) {
				s.drop(dropBadFrame)
				c.log.Debug("relay: closing connection", "err", err)
			}
			return err
		}
	}
}

func (c *sconn) handle(t frameType, p []byte) error {
	s := c.s
	switch {
	case t == framePing:
		if len(p) != pingLen {
			return badFrame("ping of %d bytes", len(p))
		}
		c.pushCtrl(item{typ: framePong, pkt: append([]byte(nil), p...)})
	case t == frameKeepAlive || t == framePong:
	case t == frameSendPacket && !c.mesh:
		if len(p) < 32 {
			return badFrame("send packet of %d bytes", len(p))
		}
		dst := Key(p[:32])
		if dst == c.key {
			return badFrame("packet to self")
		}
		pkt := p[32:]
		s.packetsIn.Add(1)
		s.bytesIn.Add(uint64(len(pkt)))
		if !c.lim.AllowN(s.now(), len(pkt)) {
			s.drop(dropRateLimited)
			return nil
		}
		s.forward(c.key, dst, pkt, false)
	case t == frameTicket && !c.mesh:
		tk, err := VerifyTicket(s.cfg.TicketKey, p, s.now())
		if err == nil && tk.Node != c.key {
			err = errors.New("ticket is for another node")
		}
		if err != nil {
			c.log.Debug("relay: ignoring renewed ticket", "err", err)
			return nil
		}
		if exp := tk.Expires.Unix(); exp > c.expires.Load() {
			c.expires.Store(exp)
		}
	case t == frameForwardPacket && c.mesh:
		if len(p) < 64 {
			return badFrame("forward packet of %d bytes", len(p))
		}
		s.packetsIn.Add(1)
		s.bytesIn.Add(uint64(len(p) - 64))
		s.forward(Key(p[:32]), Key(p[32:64]), p[64:], true)
	default:
		return badFrame("unexpected frame type %#x (%d bytes)", byte(t), len(p))
	}
	return nil
}

// readDeadline keeps a read deadline of twice the keepalive interval plus
// slack ahead, touching the timer only every few seconds.
type readDeadline struct {
	nc     net.Conn
	window time.Duration
	next   time.Time // when to push the deadline again
}

func newReadDeadline(nc net.Conn, keepAlive time.Duration) *readDeadline {
	return &readDeadline{nc: nc, window: 2*keepAlive + 5*time.Second}
}

func (d *readDeadline) refresh() {
	now := time.Now()
	if now.Before(d.next) {
		return
	}
	d.nc.SetReadDeadline(now.Add(d.window))
	d.next = now.Add(d.window / 4)
}

// writeLoop drains q into nc, flushing whenever the queue runs empty, and
// sends a keepalive after keepAlive without writes. It returns nil when
// done closes, or the write error. sent (if not nil) sees every item
// written.
func writeLoop(nc net.Conn, q *queue, done <-chan struct{}, keepAlive time.Duration, sent func(*item)) error {
	bw := bufio.NewWriterSize(nc, 64<<10)
	ka := time.NewTimer(keepAlive)
	defer ka.Stop()
	var batch []item
	for {
		select {
		case <-done:
			return nil
		case <-ka.C:
			nc.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := writeFrame(bw, frameKeepAlive); err != nil {
				return err
			}
			if err := bw.Flush(); err != nil {
				return err
			}
			ka.Reset(keepAlive)
			continue
		case <-q.ready:
		}
		nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		for {
			batch = q.drain(batch[:0])
			if len(batch) == 0 {
				break
			}
			for i := range batch {
				err := writeItem(bw, &batch[i])
				if err == nil && sent != nil {
					sent(&batch[i])
				}
				if err != nil {
					for j := i; j < len(batch); j++ {
						batch[j].release()
					}
					return err
				}
				batch[i].release()
			}
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		ka.Reset(keepAlive)
	}
}

// RateFromMbit turns a per-client rate limit in Mbit/s, as operators give
// it on the command line, into ServerConfig.RateBytes: 0 means no limit.
func RateFromMbit(mbit float64) (float64, error) {
	switch {
	case math.IsNaN(mbit) || math.IsInf(mbit, 0) || mbit < 0:
		return 0, fmt.Errorf("client rate %v Mbit/s: want 0 (no limit) or a positive number", mbit)
	case mbit == 0:
		return math.Inf(1), nil
	case mbit*1e6/8 < float64(maxPacketSize):
		return 0, fmt.Errorf("client rate %v Mbit/s: below one %d-byte packet per second", mbit, maxPacketSize)
	}
	return mbit * 1e6 / 8, nil
}

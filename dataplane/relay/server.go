package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"golang.org/x/net/http/httpguts"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/edgewire/edgewire/types/key"
)

// Defaults of ServerConfig.
const (
	DefaultQueueLen = 1024
	// DefaultQueueBytes holds DefaultQueueLen packets of a 1500-byte MTU
	// (each in a 2 KiB buffer) with room to spare, or ~450 of the largest.
	DefaultQueueBytes = 4 << 20
	// DefaultQueueBudget is what all queues of a relay hold together: 16
	// queues at their bound, or a thousand clients that stopped reading
	// at 64 KiB each.
	DefaultQueueBudget = 64 << 20
	// DefaultMaxPendingHandshakes bounds handshakes in progress; each
	// holds ~13 KiB (plus TLS state) until it ends, 5 s at most.
	DefaultMaxPendingHandshakes = 512
	// DefaultMaxPendingPerIP and DefaultMaxConnsPerIP bound one source
	// address (IPv4, or IPv6 /64); many nodes behind one NAT stay far
	// below them.
	DefaultMaxPendingPerIP = 64
	DefaultMaxConnsPerIP   = 1024
	DefaultRateBytes       = 50e6
	DefaultRateBurst       = 8 << 20
	DefaultKeepAlive       = 30 * time.Second
	// meshQueueLen and meshQueueBytes bound packets waiting on one
	// outbound mesh link; it carries many clients' traffic.
	meshQueueLen   = 4096
	meshQueueBytes = 16 << 20
	// clientCtrl bounds control frames (pongs) queued to a node; meshCtrl
	// those (presence, revocations) queued to a mesh relay.
	clientCtrl = 1 << 10
	meshCtrl   = 1 << 14
	// minQueueBytes is the smallest per-queue byte bound: it must hold
	// the largest packet frame.
	minQueueBytes = 64 << 10
	// writeTimeout bounds one batch of writes to a peer that stopped
	// reading.
	writeTimeout = 15 * time.Second
	// revocationSkew is how far ahead of this relay's clock a revocation
	// list may be issued; one dated further would shadow every list the
	// coordinator issues until then.
	revocationSkew = 5 * time.Minute
)

// Drop reasons, the keys of ServerStats.Drops.
const (
	dropNoRoute = iota
	dropQueueFull
	dropRateLimited
	dropBadFrame
	dropTooLarge
	dropOverBudget
	dropBadRevocations
	numDrops
)

var dropNames = [numDrops]string{"no_route", "queue_full", "rate_limited", "bad_frame", "too_large", "over_budget", "bad_revocations"}

// ServerConfig configures a relay. Zero values take the defaults above.
type ServerConfig struct {
	PrivateKey key.Private       // relay identity (Curve25519); required
	TicketKey  ed25519.PublicKey // coordinator's ticket (and revocation list) verification key; required
	MeshKey    []byte            // shared by the relays of a mesh, >= 32 bytes; nil: no mesh
	MeshPeers  []MeshPeer        // the other relays of the mesh; an entry with this relay's own key is skipped
	QueueLen   int               // frames (a packet, or a batch of them) queued per client before the oldest is dropped
	QueueBytes int64             // bytes queued per client before the oldest is dropped; >= 64 KiB
	// QueueBudget bounds the bytes queued in all queues together (>=
	// QueueBytes); beyond it the oldest packets of the fullest queues
	// are dropped.
	QueueBudget int64
	// MaxPendingHandshakes bounds connections in the handshake; more get
	// HTTP 503.
	MaxPendingHandshakes int
	// MaxPendingPerIP and MaxConnsPerIP bound the handshakes in progress
	// and the connections from one IPv4 address or IPv6 /64; more get
	// HTTP 429.
	MaxPendingPerIP int
	MaxConnsPerIP   int
	RateBytes       float64       // sustained bytes/s a client may send; +Inf: no limit (see RateFromMbit)
	RateBurst       int           // burst bytes a client may send; >= the largest packet
	KeepAlive       time.Duration // keepalive interval on idle connections, 1s..65535s
	Logger          *slog.Logger
	Now             func() time.Time
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
	Clients     int   // nodes connected here
	MeshLinks   int   // outbound mesh links up
	MeshClients int   // mesh relays connected here
	Pending     int   // handshakes in progress
	QueuedBytes int64 // held by queued packets (at most QueueBudget)
	PacketsIn   uint64
	PacketsOut  uint64
	BytesIn     uint64
	BytesOut    uint64
	Refused     uint64            // handshakes that failed
	Drops       map[string]uint64 // packets (bad_frame: connections; bad_revocations: lists) dropped, by reason
}

// Server is a relay. Serve it with ServeHTTP and keep Run running.
type Server struct {
	cfg        ServerConfig
	pub        Key
	log        *slog.Logger
	now        func() time.Time
	peers      []meshPeer
	sweepEvery time.Duration // ticket expiry sweeps; tests shorten it
	batch      bool          // take featureBatch; tests turn it off to play an older relay
	budget     *budget       // shared by every packet queue
	limits     *connLimits

	handlers sync.WaitGroup // ServeHTTP calls holding a connection

	packetsIn, packetsOut, bytesIn, bytesOut, refused atomic.Uint64
	handshakes                                        atomic.Uint64 // nodes' completed handshakes, for peerInfo.seq
	drops                                             [numDrops]atomic.Uint64

	mu        sync.RWMutex          // guards the fields below
	closed    bool                  // Run ended; refuse new connections
	conns     map[net.Conn]struct{} // every hijacked connection, to close on shutdown
	clients   map[Key]*sconn        // local nodes by node key
	meshConns map[Key]*sconn        // mesh relays dialled in here, by relay key
	remote    map[Key]*meshLink     // node key -> outbound link to the relay holding it
	links     int                   // outbound mesh links up
	revoked   map[Key]time.Time     // node -> refused until
	revIssued time.Time             // issue time of the newest revocation list applied
}

type meshPeer struct {
	MeshPeer
	u parsedURL
}

// NewServer validates cfg and returns a relay.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.PrivateKey == (key.Private{}) {
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
	case cfg.QueueBytes == 0:
		cfg.QueueBytes = DefaultQueueBytes
	case cfg.QueueBytes < minQueueBytes:
		return nil, fmt.Errorf("relay: QueueBytes %d is below %d", cfg.QueueBytes, minQueueBytes)
	}
	switch {
	case cfg.QueueBudget == 0:
		cfg.QueueBudget = max(DefaultQueueBudget, cfg.QueueBytes)
	case cfg.QueueBudget < cfg.QueueBytes:
		return nil, fmt.Errorf("relay: QueueBudget %d is below QueueBytes %d", cfg.QueueBudget, cfg.QueueBytes)
	}
	for _, l := range []struct {
		name string
		v    *int
		def  int
	}{
		{"MaxPendingHandshakes", &cfg.MaxPendingHandshakes, DefaultMaxPendingHandshakes},
		{"MaxPendingPerIP", &cfg.MaxPendingPerIP, DefaultMaxPendingPerIP},
		{"MaxConnsPerIP", &cfg.MaxConnsPerIP, DefaultMaxConnsPerIP},
	} {
		switch {
		case *l.v < 0:
			return nil, fmt.Errorf("relay: %s %d is negative", l.name, *l.v)
		case *l.v == 0:
			*l.v = l.def
		}
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
		pub:        cfg.PrivateKey.Public(),
		log:        cfg.Logger,
		now:        cfg.Now,
		sweepEvery: time.Second,
		batch:      true,
		budget:     newBudget(cfg.QueueBudget),
		limits:     newConnLimits(cfg.MaxPendingHandshakes, cfg.MaxPendingPerIP, cfg.MaxConnsPerIP),
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
	cur, ok := s.revoked[node]
	changed := !ok || until.After(cur)
	if changed {
		s.revoked[node] = until
	}
	c := s.clients[node]
	if propagate && changed { // peers that connect later get a snapshot
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

// applyRevocations applies a verified list unless one issued at the same
// time or later was applied; it reports whether it applied rv.
func (s *Server) applyRevocations(rv Revocations) bool {
	now := s.now()
	s.mu.Lock()
	if !rv.Issued.After(s.revIssued) {
		s.mu.Unlock()
		return false
	}
	s.revIssued = rv.Issued
	s.mu.Unlock()
	for _, e := range rv.Entries {
		if now.Before(e.Until) {
			s.revoke(e.Node, e.Until, true)
		}
	}
	return true
}

func revokeItem(node Key, until time.Time) item {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(until.Unix()))
	return keyItem(frameRevoke, node, b[:])
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
		PacketsIn:   s.packetsIn.Load(),
		PacketsOut:  s.packetsOut.Load(),
		BytesIn:     s.bytesIn.Load(),
		BytesOut:    s.bytesOut.Load(),
		Refused:     s.refused.Load(),
		Pending:     s.limits.pendingHandshakes(),
		QueuedBytes: s.budget.used.Load(),
		Drops:       make(map[string]uint64, numDrops),
	}
	for i := range s.drops {
		st.Drops[dropNames[i]] = s.dropCount(i)
	}
	s.mu.RLock()
	st.Clients, st.MeshClients, st.MeshLinks = len(s.clients), len(s.meshConns), s.links
	s.mu.RUnlock()
	return st
}

func (s *Server) drop(reason int) { s.drops[reason].Add(1) }

// dropCount reads one drop counter; the budget counts its own.
func (s *Server) dropCount(reason int) uint64 {
	if reason == dropOverBudget {
		return s.budget.evicted.Load()
	}
	return s.drops[reason].Load()
}

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
	if v := r.Header.Get(versionHeader); v != strconv.Itoa(ProtocolVersion) {
		refuseHTTP(w, http.StatusBadRequest, fmt.Sprintf("edgewire relay: unsupported protocol version %q, this relay speaks %d (upgrade the older side)", v, ProtocolVersion))
		return
	}
	var hello *clientHello
	if vs := r.Header.Values(clientHeader); len(vs) > 0 {
		h, err := parseClientHello(vs)
		if err != nil {
			refuseHTTP(w, http.StatusBadRequest, "edgewire relay: "+err.Error())
			return
		}
		hello = &h
	}
	batch := hello != nil && s.batch && httpguts.HeaderValuesContainsToken(r.Header.Values(featuresHeader), featureBatch)
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "edgewire relay: needs HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	slot, code, msg := s.limits.admit(sourcePrefix(r.RemoteAddr))
	if slot == nil {
		s.refused.Add(1)
		refuseHTTP(w, code, msg)
		return
	}
	defer slot.close()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		refuseHTTP(w, http.StatusServiceUnavailable, "edgewire relay: shutting down")
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
	// The handshake reads through the HTTP server's small buffer.
	s.serveConn(nc, brw.Reader, hello, batch, slot)
}

// refuseHTTP answers with code and text and closes the connection.
func refuseHTTP(w http.ResponseWriter, code int, text string) {
	w.Header().Set("Connection", "close")
	http.Error(w, text, code)
}

// serveConn runs one upgraded connection until it ends. br may hold bytes
// the client sent after its request; slot's handshake ends here. batch:
// the node offered featureBatch and this relay takes it.
func (s *Server) serveConn(nc net.Conn, br *bufio.Reader, hello *clientHello, batch bool, slot *connSlot) {
	log := s.log.With("remote", nc.RemoteAddr().String())
	nc.SetDeadline(time.Now().Add(handshakeTimeout))
	// Until the peer has proven itself it gets small buffers: the
	// handshake frames are a few hundred bytes.
	bw := bufio.NewWriterSize(nc, 512)
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + upgradeProto + "\r\nConnection: Upgrade\r\n"
	if batch {
		resp += featuresHeader + ": " + featureBatch + "\r\n"
	}
	io.WriteString(bw, resp+"\r\n")
	pi, err := s.serverHandshake(br, bw, hello)
	slot.handshakeDone()
	if err != nil {
		s.refused.Add(1)
		log.Debug("relay: handshake failed", "err", err)
		return
	}
	nc.SetDeadline(time.Time{})
	if br.Buffered() == 0 {
		br = bufio.NewReaderSize(nc, 64<<10)
	} else { // keep what it holds, read the rest through the big buffer
		br = bufio.NewReaderSize(br, 64<<10)
	}
	c := &sconn{
		s:     s,
		nc:    nc,
		key:   pi.key,
		mesh:  pi.mesh,
		batch: batch && !pi.mesh,
		seq:   pi.seq,
		done:  make(chan struct{}),
	}
	if pi.mesh {
		c.log = log.With("mesh_peer_key", pi.key)
		c.q = newQueue(queueConfig{pkts: 1, bytes: minQueueBytes, ctrl: meshCtrl}, nil) // control frames only
		if !s.addMeshConn(c) {
			return
		}
		defer s.removeMeshConn(c)
	} else {
		c.log = log.With("key", pi.key)
		c.q = newQueue(queueConfig{pkts: s.cfg.QueueLen, bytes: s.cfg.QueueBytes, ctrl: clientCtrl}, s.budget)
		c.lim = rate.NewLimiter(rate.Limit(s.cfg.RateBytes), s.cfg.RateBurst)
		c.unlimited = math.IsInf(s.cfg.RateBytes, 1)
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
	switch it.typ {
	case frameRecvPacket:
		s.packetsOut.Add(1)
		s.bytesOut.Add(uint64(len(it.pkt) - 32))
	case frameForwardPacket:
		s.packetsOut.Add(1)
		s.bytesOut.Add(uint64(len(it.pkt) - 64))
	case frameRecvPackets:
		s.packetsOut.Add(uint64(it.pkts))
		s.bytesOut.Add(uint64(len(it.pkt) - 32 - recordHeaderLen*int(it.pkts)))
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
	if old != nil && old.seq > c.seq {
		// Both connections of the node finished their handshakes, and
		// the newer one got here first: this one is the stale one.
		c.log.Debug("relay: a newer connection of the same node is already here")
		return false
	}
	s.clients[c.key] = c
	if old != nil {
		old.log.Debug("relay: replaced by a new connection of the same node")
		old.close()
		return true
	}
	for _, m := range s.meshConns {
		m.pushCtrl(keyItem(framePeerPresent, c.key, nil))
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
		m.pushCtrl(keyItem(framePeerGone, c.key, nil))
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
		c.q.pushCtrl(keyItem(framePeerPresent, k, nil), true)
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
// holding dst. It returns the queue it went to, whose writer the caller
// wakes (see sconn.wakeLater), or nil.
func (s *Server) forward(src, dst Key, pkt []byte, fromMesh bool) *queue {
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
		return nil
	}
	// A packet refused for the budget is counted by the budget.
	if dropped, _ := q.enqueue(it); dropped > 0 {
		s.drops[dropQueueFull].Add(uint64(dropped))
	}
	return q
}

// forwardBatch routes the packets of a batch frame from src to dst
// (records that packetRecords accepted: n packets) like forward: as one
// batch frame to a local node that takes them, else packet by packet. It
// returns the queue they went to, whose writer the caller wakes, or nil.
func (s *Server) forwardBatch(src, dst Key, recs []byte, n int) *queue {
	s.mu.RLock()
	c := s.clients[dst]
	var l *meshLink
	if c == nil {
		l = s.remote[dst]
	}
	s.mu.RUnlock()
	var q *queue
	var t frameType
	switch {
	case c != nil && c.batch:
		it := newBatchItem(frameRecvPackets, src, 32+len(recs))
		it.pkt = append(it.pkt, recs...)
		it.pkts = int32(n)
		if dropped, _ := c.q.enqueue(it); dropped > 0 {
			s.drops[dropQueueFull].Add(uint64(dropped))
		}
		return c.q
	case c != nil:
		q, t = c.q, frameRecvPacket
	case l != nil:
		q, t = l.q, frameForwardPacket
	default:
		s.drops[dropNoRoute].Add(uint64(n))
		return nil
	}
	for rest := recs; len(rest) > 0; {
		var pkt []byte
		pkt, rest = nextRecord(rest)
		if dropped, _ := q.enqueue(newPacketItem(t, src, dst, pkt)); dropped > 0 {
			s.drops[dropQueueFull].Add(uint64(dropped))
		}
	}
	return q
}

// sconn is one connection served here: a node, or a mesh relay that
// dialled in.
type sconn struct {
	s     *Server
	nc    net.Conn
	key   Key
	mesh  bool
	batch bool   // a node that takes frameRecvPackets
	seq   uint64 // the handshake's order among nodes' (peerInfo.seq)
	log   *slog.Logger
	q     *queue
	lim   *rate.Limiter // bytes a node may send; nil for mesh relays
	// unlimited: lim allows everything, so packets skip it (and the
	// clock read it needs).
	unlimited bool
	expires   atomic.Int64 // ticket expiry, unix seconds (nodes)

	closeOnce sync.Once
	done      chan struct{} // closed by close

	// wake holds the queues this connection's reader put packets on and
	// has not yet woken the writers of (readLoop's goroutine only).
	wake []*queue
}

// maxWake bounds the queues a reader wakes late; past it, it wakes them.
const maxWake = 16

// wakeLater remembers to wake q's writer once the reader has taken every
// frame it holds: the packets of one read leave in one write, instead of
// a write (and a TLS record) per packet while the writer keeps up.
func (c *sconn) wakeLater(q *queue) {
	if q == nil || slices.Contains(c.wake, q) {
		return
	}
	if len(c.wake) == maxWake {
		c.wakeWriters()
	}
	c.wake = append(c.wake, q)
}

func (c *sconn) wakeWriters() {
	for i, q := range c.wake {
		q.signal()
		c.wake[i] = nil
	}
	c.wake = c.wake[:0]
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
	limit := maxFramePayload
	if !c.mesh {
		limit = maxRevocationsLen
	}
	defer c.wakeWriters()
	for {
		if !frameBuffered(br) { // the next read may wait
			c.wakeWriters()
			dl.refresh()
		}
		// Packet frames fit br (64 KiB) whole, so p aliases it: no
		// copy. Only revocation lists may be bigger, and are rare.
		t, p, err := readFrame(br, nil, limit)
		if err != nil {
			if errors.Is(err, errFrameTooLarge) {
				s.drop(dropBadFrame)
			}
			return err
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
		c.pushCtrl(item{typ: framePong, pkt: bytes.Clone(p)})
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
		if len(pkt) > maxPacketSize {
			s.drop(dropTooLarge)
			return nil
		}
		if !c.unlimited && !c.lim.AllowN(s.now(), len(pkt)) {
			s.drop(dropRateLimited)
			return nil
		}
		c.wakeLater(s.forward(c.key, dst, pkt, false))
	case t == frameSendPackets && !c.mesh:
		return c.handleBatch(p)
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
	case t == frameRevocations && !c.mesh:
		return c.handleRevocations(p)
	case t == frameForwardPacket && c.mesh:
		if len(p) < 64 {
			return badFrame("forward packet of %d bytes", len(p))
		}
		s.packetsIn.Add(1)
		s.bytesIn.Add(uint64(len(p) - 64))
		c.wakeLater(s.forward(Key(p[:32]), Key(p[32:64]), p[64:], true)) // <= maxPacketSize: the frame limit

	default:
		return badFrame("unexpected frame type %#x (%d bytes)", byte(t), len(p))
	}
	return nil
}

// handleBatch forwards the packets of a frameSendPackets. A malformed
// frame closes the connection before any of its packets is forwarded.
func (c *sconn) handleBatch(p []byte) error {
	s := c.s
	if len(p) < 32 {
		return badFrame("batch frame of %d bytes", len(p))
	}
	dst := Key(p[:32])
	if dst == c.key {
		return badFrame("packets to self")
	}
	recs := p[32:]
	n, size, err := packetRecords(recs)
	if err != nil {
		return badFrame("batch frame: %v", err)
	}
	s.packetsIn.Add(uint64(n))
	s.bytesIn.Add(uint64(size))
	if c.unlimited || c.lim.AllowN(s.now(), size) {
		c.wakeLater(s.forwardBatch(c.key, dst, recs, n))
		return nil
	}
	// Over the limit as a whole: packet by packet, as far as it allows.
	now := s.now()
	for len(recs) > 0 {
		var pkt []byte
		pkt, recs = nextRecord(recs)
		if !c.lim.AllowN(now, len(pkt)) {
			s.drop(dropRateLimited)
			continue
		}
		c.wakeLater(s.forward(c.key, dst, pkt, false))
	}
	return nil
}

// errBadRevocations closes the connection of a client that sends a
// revocation list the coordinator did not sign.
var errBadRevocations = errors.New("bad revocation list")

// handleRevocations applies a revocation list the client carries from
// the coordinator. Stale lists are normal (every client carries the same
// list) and ignored; a forged one closes the connection.
func (c *sconn) handleRevocations(p []byte) error {
	s := c.s
	now := s.now()
	if !c.lim.AllowN(now, len(p)) {
		s.drop(dropRateLimited)
		return nil
	}
	rv, err := VerifyRevocations(s.cfg.TicketKey, p)
	if err != nil {
		s.drop(dropBadRevocations)
		c.log.Debug("relay: closing connection", "err", err)
		return fmt.Errorf("%w: %w", errBadRevocations, err)
	}
	if rv.Issued.After(now.Add(revocationSkew)) {
		s.drop(dropBadRevocations)
		c.log.Warn("relay: ignoring a revocation list issued in the future; are the clocks of coordinator and relay apart?", "issued", rv.Issued)
		return nil
	}
	if s.applyRevocations(rv) {
		c.log.Info("relay: applied revocation list", "issued", rv.Issued, "entries", len(rv.Entries))
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

// writeBufs holds the writers' 64 KiB buffers. A connection takes one
// only while it has something to write, so the thousands of idle
// connections of a busy relay hold none.
var writeBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

// writeLoop drains q into nc, flushing whenever the queue runs empty, and
// sends a keepalive after keepAlive without writes. It returns nil when
// done closes, or the write error. sent (if not nil) sees every item
// written.
func writeLoop(nc net.Conn, q *queue, done <-chan struct{}, keepAlive time.Duration, sent func(*item)) error {
	ka := time.NewTimer(keepAlive)
	defer ka.Stop()
	var batch []item
	for {
		keepalive := false
		select {
		case <-done:
			return nil
		case <-ka.C:
			keepalive = true
		case <-q.ready:
		}
		bw := writeBufs.Get().(*bufio.Writer)
		bw.Reset(nc)
		nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		var err error
		if keepalive {
			err = writeFrame(bw, frameKeepAlive)
		} else {
			batch, err = writeQueued(bw, q, batch, sent)
		}
		if err == nil {
			err = bw.Flush()
		}
		bw.Reset(nil) // no reference to nc, and no error, in the pool
		writeBufs.Put(bw)
		if err != nil {
			return err
		}
		ka.Reset(keepAlive)
	}
}

// writeQueued writes q's frames to bw until q is empty (without the
// final flush). batch is scratch space, returned for reuse.
func writeQueued(bw *bufio.Writer, q *queue, batch []item, sent func(*item)) ([]item, error) {
	for {
		batch = q.drain(batch[:0])
		if len(batch) == 0 {
			return batch, nil
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
				return batch[:0], err
			}
			batch[i].release()
		}
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

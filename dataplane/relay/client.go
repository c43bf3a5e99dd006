package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

// A client's queue of frames it has not yet written: packets (bounded
// like a relay's per-client queue) and control frames.
const (
	clientQueueLen   = DefaultQueueLen
	clientQueueBytes = DefaultQueueBytes
)

// ClientConfig configures a node's connection to its home relay.
type ClientConfig struct {
	URL        string      // "https://host:port/relay" or "http://host:port/relay"
	ServerKey  Key         // expected relay key, from the relay map
	PrivateKey key.Private // node key
	Ticket     []byte      // initial ticket
	// OnPacket is called from the reader goroutine; pkt is valid only
	// during the call.
	OnPacket func(src Key, pkt []byte)
	// OnFlush (optional) is called from the reader goroutine after
	// OnPacket calls, once it holds no further whole frame and its next
	// read may wait: a receiver can batch packets until then.
	OnFlush func()
	// OnConnected (optional) is called from Run's goroutine each time a
	// connection is up (handshake done); it must not block. Without it
	// a caller learns of the connection only by polling Connected.
	OnConnected func()
	Logger      *slog.Logger
	Dial        func(ctx context.Context, network, addr string) (net.Conn, error) // nil: net.Dialer
	// TLSConfig for https URLs (nil: no certificate verification, since
	// the relay proves its key in the handshake).
	TLSConfig *tls.Config
}

// Client is a node's connection to a relay. Run keeps it up; the other
// methods are safe for concurrent use.
type Client struct {
	cfg ClientConfig
	u   parsedURL
	log *slog.Logger
	cur atomic.Pointer[cconn] // live connection, nil while down
	// noBatch: do not offer featureBatch (tests play an older node).
	noBatch bool

	mu          sync.Mutex // guards ticket, revocations, lastErr, and pairs their changes with cur
	ticket      []byte
	revocations []byte
	lastErr     error
}

// cconn is one live client connection.
type cconn struct {
	nc        net.Conn
	batch     bool // the relay takes featureBatch: packets go in batch frames
	q         *queue
	done      chan struct{} // closed by close
	closeOnce sync.Once

	pmu   sync.Mutex // guards pings
	pings map[[pingLen]byte]chan struct{}
}

func (cc *cconn) close() {
	cc.closeOnce.Do(func() {
		close(cc.done)
		cc.nc.Close()
		cc.q.close()
	})
}

// NewClient validates cfg. Run connects.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := parseRelayURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("relay client: %w", err)
	}
	if cfg.ServerKey == (Key{}) {
		return nil, errors.New("relay client: ServerKey is required")
	}
	if cfg.PrivateKey == (key.Private{}) {
		return nil, errors.New("relay client: PrivateKey is required")
	}
	if cfg.OnPacket == nil {
		cfg.OnPacket = func(Key, []byte) {}
	}
	if cfg.OnFlush == nil {
		cfg.OnFlush = func() {}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Client{
		cfg:     cfg,
		u:       u,
		log:     cfg.Logger.With("relay_url", cfg.URL),
		ticket:  bytes.Clone(cfg.Ticket),
		lastErr: ErrNotConnected,
	}, nil
}

// Run connects and reconnects (backoff from 200ms doubling to 5s, with
// jitter) until ctx ends; then it returns nil.
func (c *Client) Run(ctx context.Context) error {
	backoff := minBackoff
	for {
		up, err := c.session(ctx)
		if ctx.Err() != nil {
			c.setErr(ErrNotConnected)
			return nil
		}
		c.setErr(err)
		if up {
			backoff = minBackoff
		}
		wait := jitter(backoff)
		lvl := slog.LevelDebug
		if !up {
			lvl = slog.LevelWarn
		}
		c.log.Log(ctx, lvl, "relay: connection ended; reconnecting", "err", err, "in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			c.setErr(ErrNotConnected)
			return nil
		case <-time.After(wait):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (c *Client) setErr(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
}

// session connects once and serves the connection until it fails; up
// reports whether the handshake succeeded.
func (c *Client) session(ctx context.Context) (up bool, err error) {
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	hello := newClientHello(c.cfg.PrivateKey.Public())
	hello.batch = !c.noBatch
	nc, br, batch, err := dialUpgrade(hctx, c.cfg.Dial, c.u, c.cfg.TLSConfig, hello)
	if err != nil {
		cancel()
		return false, err
	}
	stopHS := context.AfterFunc(hctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	c.mu.Lock()
	ticket := c.ticket
	c.mu.Unlock()
	ka, err := clientHandshake(br, bufio.NewWriterSize(nc, 512), c.cfg.ServerKey, c.cfg.PrivateKey, hello, ticket)
	stopHS()
	cancel()
	if err != nil {
		nc.Close()
		if ctx.Err() == nil && hctx.Err() != nil {
			err = fmt.Errorf("handshake timed out: %w", err)
		}
		return false, err
	}
	if ka <= 0 {
		ka = DefaultKeepAlive
	}
	nc.SetDeadline(time.Time{})
	cc := &cconn{
		nc:    nc,
		batch: batch,
		q:     newQueue(queueConfig{pkts: clientQueueLen, bytes: clientQueueBytes, ctrl: clientCtrl}, nil),
		done:  make(chan struct{}),
		pings: map[[pingLen]byte]chan struct{}{},
	}
	stop := context.AfterFunc(ctx, cc.close)
	defer stop()

	c.mu.Lock()
	c.lastErr = nil
	c.cur.Store(cc)
	if !bytes.Equal(ticket, c.ticket) { // SetTicket during the handshake
		cc.q.pushCtrl(item{typ: frameTicket, pkt: c.ticket}, true)
	}
	if len(c.revocations) > 0 {
		cc.q.pushCtrl(item{typ: frameRevocations, pkt: c.revocations}, true)
	}
	c.mu.Unlock()
	c.log.Info("relay: connected")
	if c.cfg.OnConnected != nil {
		c.cfg.OnConnected()
	}

	var writer sync.WaitGroup
	writer.Go(func() {
		writeLoop(nc, cc.q, cc.done, ka, nil)
		cc.close()
	})
	err = c.readLoop(cc, br, ka)
	c.cur.CompareAndSwap(cc, nil)
	cc.close()
	writer.Wait()
	return true, err
}

func (c *Client) readLoop(cc *cconn, br *bufio.Reader, ka time.Duration) error {
	dl := newReadDeadline(cc.nc, ka)
	pending := false // OnPacket called since the last OnFlush
	defer func() {
		if pending {
			c.cfg.OnFlush()
		}
	}()
	for {
		if !frameBuffered(br) { // the next read may wait
			if pending {
				c.cfg.OnFlush()
				pending = false
			}
			dl.refresh()
		}
		// br holds any frame whole (64 KiB), so p aliases it: no copy.
		t, p, err := readFrame(br, nil, maxBatchPayload)
		if err != nil {
			return err
		}
		switch t {
		case frameRecvPacket:
			if len(p) < 32 {
				return fmt.Errorf("relay sent a packet frame of %d bytes", len(p))
			}
			c.cfg.OnPacket(Key(p[:32]), p[32:])
			pending = true
		case frameRecvPackets:
			if len(p) < 32 {
				return fmt.Errorf("relay sent a batch frame of %d bytes", len(p))
			}
			if _, _, err := packetRecords(p[32:]); err != nil {
				return fmt.Errorf("relay sent a bad batch frame: %w", err)
			}
			src := Key(p[:32])
			for rest := p[32:]; len(rest) > 0; {
				var pkt []byte
				pkt, rest = nextRecord(rest)
				c.cfg.OnPacket(src, pkt)
			}
			pending = true
		case framePing:
			if len(p) == pingLen {
				cc.q.pushCtrl(item{typ: framePong, pkt: bytes.Clone(p)}, false)
			}
		case framePong:
			if len(p) == pingLen {
				cc.pmu.Lock()
				ch := cc.pings[[pingLen]byte(p)]
				delete(cc.pings, [pingLen]byte(p))
				cc.pmu.Unlock()
				if ch != nil {
					close(ch)
				}
			}
		default:
			// keepalives, and frames of later versions
		}
	}
}

// Send queues pkt (copied) for dst. It never blocks: when the queue is
// full the oldest packet is dropped. It returns ErrNotConnected while no
// connection is up, and ErrPacketTooLarge for a packet bigger than any
// WireGuard message (9 KiB).
func (c *Client) Send(dst Key, pkt []byte) error {
	return c.SendBatch(dst, [][]byte{pkt})
}

// SendBatch is Send for several packets to one node, queued in order;
// the writer is woken once, so they leave in one write. A packet too
// large is skipped (the others are queued) and reported. On a relay that
// takes featureBatch they leave in batch frames.
func (c *Client) SendBatch(dst Key, pkts [][]byte) error {
	cc := c.cur.Load()
	if cc == nil {
		return ErrNotConnected
	}
	var err error
	if cc.batch {
		err = enqueueBatches(cc.q, frameSendPackets, dst, pkts)
	} else {
		for _, pkt := range pkts {
			if len(pkt) > maxPacketSize {
				err = fmt.Errorf("%w: %d bytes, max %d", ErrPacketTooLarge, len(pkt), maxPacketSize)
				continue
			}
			cc.q.enqueue(newPacketItem(frameSendPacket, dst, Key{}, pkt))
		}
	}
	cc.q.signal()
	return err
}

// enqueueBatches queues pkts for k in batch frames of type t, as few as
// maxBatchPayload allows, without waking the writer. Empty packets are
// skipped (a record cannot be empty; WireGuard sends none), too large
// ones skipped and reported.
func enqueueBatches(q *queue, t frameType, k Key, pkts [][]byte) error {
	var err error
	for i := 0; i < len(pkts); {
		size, j := 32, i
		for j < len(pkts) && len(pkts[j]) > 0 && len(pkts[j]) <= maxPacketSize && size+recordHeaderLen+len(pkts[j]) <= maxBatchPayload {
			size += recordHeaderLen + len(pkts[j])
			j++
		}
		if j == i { // pkts[i] cannot be a record
			if len(pkts[i]) > maxPacketSize {
				err = fmt.Errorf("%w: %d bytes, max %d", ErrPacketTooLarge, len(pkts[i]), maxPacketSize)
			}
			i++
			continue
		}
		it := newBatchItem(t, k, size)
		for _, p := range pkts[i:j] {
			it.pkt = appendRecord(it.pkt, p)
		}
		it.pkts = int32(j - i)
		q.enqueue(it)
		i = j
	}
	return err
}

// SetTicket replaces the ticket: it is sent on the live connection at
// once and used for later connections.
func (c *Client) SetTicket(t []byte) {
	t = bytes.Clone(t)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ticket = t
	if cc := c.cur.Load(); cc != nil {
		cc.q.pushCtrl(item{typ: frameTicket, pkt: t}, true)
	}
}

// SetRevocations sets the coordinator's signed revocation list (see
// SignRevocations), which the relay applies if it is newer than the last
// it applied: it is sent after every handshake, and at once on the live
// connection when it changes. nil forgets it. A list too long for a
// frame is ignored.
func (c *Client) SetRevocations(b []byte) {
	if len(b) > maxRevocationsLen {
		c.log.Warn("relay: revocation list too long; not sending it", "bytes", len(b), "max", maxRevocationsLen)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if bytes.Equal(b, c.revocations) {
		return
	}
	c.revocations = bytes.Clone(b)
	if cc := c.cur.Load(); cc != nil && len(b) > 0 {
		cc.q.pushCtrl(item{typ: frameRevocations, pkt: c.revocations}, true)
	}
}

// Connected reports whether a relay connection is up.
func (c *Client) Connected() bool { return c.cur.Load() != nil }

// LastError is why the last connection attempt failed or the last
// connection ended; nil while connected.
func (c *Client) LastError() error {
	if c.Connected() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// Ping measures the round trip over the relay connection.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	cc := c.cur.Load()
	if cc == nil {
		return 0, ErrNotConnected
	}
	var id [pingLen]byte
	copy(id[:], newNonce(pingLen))
	ch := make(chan struct{})
	cc.pmu.Lock()
	cc.pings[id] = ch
	cc.pmu.Unlock()
	defer func() {
		cc.pmu.Lock()
		delete(cc.pings, id)
		cc.pmu.Unlock()
	}()
	start := time.Now()
	if !cc.q.pushCtrl(item{typ: framePing, pkt: id[:]}, false) {
		return 0, ErrNotConnected
	}
	select {
	case <-ch:
		return time.Since(start), nil
	case <-cc.done:
		return 0, ErrNotConnected
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

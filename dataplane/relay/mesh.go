package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Reconnect backoff of mesh links and clients: doubling, with jitter in
// [b/2, b] so relays and nodes restarting together do not stampede.
const (
	minBackoff = 200 * time.Millisecond
	maxBackoff = 5 * time.Second
)

func jitter(b time.Duration) time.Duration { return b/2 + rand.N(b/2+1) }

// meshLink is one live outbound connection to a mesh peer. This relay
// sends frameForwardPacket on it; the peer announces its nodes on it.
type meshLink struct {
	peer meshPeer
	q    *queue
}

// runMeshLink keeps a link to p up until ctx ends.
func (s *Server) runMeshLink(ctx context.Context, p meshPeer) {
	log := s.log.With("mesh_peer", p.URL)
	backoff := minBackoff
	for {
		up, err := s.meshSession(ctx, p)
		if ctx.Err() != nil {
			return
		}
		if up {
			backoff = minBackoff
		}
		wait := jitter(backoff)
		log.Warn("relay: mesh link down; reconnecting", "err", err, "in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// meshSession dials p, authenticates and serves the link until it fails.
// up reports whether the handshake succeeded.
func (s *Server) meshSession(ctx context.Context, p meshPeer) (up bool, err error) {
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	nc, br, _, err := dialUpgrade(hctx, s.cfg.DialMesh, p.u, nil, nil)
	if err != nil {
		cancel()
		return false, err
	}
	stopHS := context.AfterFunc(hctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	ka, err := meshHandshake(br, bufio.NewWriterSize(nc, 256), p.Key, s.pub, s.cfg.MeshKey)
	stopHS()
	cancel()
	if err != nil {
		nc.Close()
		return false, err
	}
	if ka <= 0 {
		ka = s.cfg.KeepAlive
	}
	nc.SetDeadline(time.Time{})
	l := &meshLink{peer: p, q: newQueue(queueConfig{pkts: meshQueueLen, bytes: meshQueueBytes, ctrl: meshCtrl}, s.budget)}
	done := make(chan struct{})
	var closeOnce sync.Once
	closeLink := func() {
		closeOnce.Do(func() {
			close(done)
			nc.Close()
			l.q.close()
		})
	}
	stop := context.AfterFunc(ctx, closeLink)
	defer stop()

	s.mu.Lock()
	s.links++
	s.mu.Unlock()
	defer s.linkDown(l)
	s.log.Info("relay: mesh link up", "mesh_peer", p.URL)

	var writer sync.WaitGroup
	writer.Go(func() {
		writeLoop(nc, l.q, done, ka, s.countOut)
		closeLink()
	})
	err = s.meshReadLoop(l, br, nc, ka)
	closeLink()
	writer.Wait()
	return true, err
}

// linkDown forgets every node the link announced.
func (s *Server) linkDown(l *meshLink) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.links--
	for k, v := range s.remote {
		if v == l {
			delete(s.remote, k)
		}
	}
}

func (s *Server) meshReadLoop(l *meshLink, br *bufio.Reader, nc net.Conn, ka time.Duration) error {
	dl := newReadDeadline(nc, ka)
	for {
		dl.refresh()
		t, p, err := readFrame(br, nil, maxFramePayload)
		if err != nil {
			return err
		}
		switch t {
		case framePeerPresent, framePeerGone:
			if len(p) != 32 {
				return errors.New("mesh peer sent a bad presence frame")
			}
			k := Key(p)
			s.mu.Lock()
			if t == framePeerPresent {
				s.remote[k] = l
			} else if s.remote[k] == l {
				delete(s.remote, k)
			}
			s.mu.Unlock()
		case frameRevoke:
			if len(p) != 40 {
				return errors.New("mesh peer sent a bad revoke frame")
			}
			until := time.Unix(int64(min(binary.BigEndian.Uint64(p[32:]), maxUnix)), 0)
			s.revoke(Key(p[:32]), until, false)
		case framePing:
			if len(p) == pingLen {
				l.q.pushCtrl(item{typ: framePong, pkt: bytes.Clone(p)}, false)
			}
		default:
			// keepalives, pongs, and frames of later versions
		}
	}
}

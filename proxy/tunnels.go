package proxy

import (
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
)

// tunnel is one live tunnel connection and the streams it carries now.
type tunnel struct {
	s transport.Session
	// log carries the tunnel's id, transport, group and peer.
	log   *slog.Logger
	id    uint64
	since time.Time
	// peer is the authenticated peer's name, from this side's configuration.
	peer string
	// peerLabel is peer as a metric label (see Engine.peerLabel), fixed at
	// admission, when the material that named the peer was in force.
	peerLabel string
	active    atomic.Int64
	// opened counts the streams of active that this side opened; bound is
	// how many of them the peer accepts at once (see takeOpened).
	opened atomic.Int64
	bound  transport.StreamBound
	// refusedAt is, once the peer refused a stream of ours
	// (transport.ErrStreamRefused), how many of ours it carried then: its
	// real bound, which may be lower than bound.Streams, this side's own.
	refusedAt atomic.Int64
	// closing is why this side closed the tunnel (see closeFor), when it did.
	closing atomic.Pointer[string]

	// traffic is the stream payload each way, for the status.
	traffic traffic
}

func (t *tunnel) label() string { return strconv.FormatUint(t.id, 10) }

// Reasons this side closes a tunnel for, as the "reason" of "tunnel
// disconnected" next to the transport's own (transport.CloseReason).
const (
	closeShutdown = "shutdown"            // the engine is stopping
	closeRevoked  = "revoked"             // a reload no longer accepts the peer
	closeExpired  = "certificate_expired" // the peer's CA-mode certificate expired
	closeMoved    = "moved"               // retired after its successor joined the pool
	closeSurplus  = "surplus"             // a dial side's extra connection, idle, or beyond an address's share
	// closeAddressGone is a dial side's connection to an address its
	// Tunnel name no longer resolves to, drained.
	closeAddressGone = "address_removed"
)

// closeFor closes t's session, recording reason as why; the first reason
// given is the one reported.
func (t *tunnel) closeFor(reason string) {
	t.closing.CompareAndSwap(nil, &reason)
	_ = t.s.Close() // the reason is what is reported; the session is gone either way
}

// closeReason is why t's session ended: this side's reason when it closed
// it, else what the transport says of err, AcceptStream's last error.
func (t *tunnel) closeReason(err error) string {
	if r := t.closing.Load(); r != nil {
		return *r
	}
	return string(transport.ReasonOf(err))
}

// tunnelSet is the pool of live tunnel connections new streams are spread over.
type tunnelSet struct {
	mu      sync.Mutex
	list    []*tunnel
	changed chan struct{}
	// closed is set by closeAll: a session that arrives after it is refused,
	// so shutdown never waits on a tunnel it did not close.
	closed bool
	next   int // pick's round-robin counter among equally loaded tunnels
}

func (ts *tunnelSet) init() { ts.changed = make(chan struct{}) }

func (ts *tunnelSet) notifyLocked() {
	close(ts.changed)
	ts.changed = make(chan struct{})
}

// errPoolFull, errPeerShare and errPoolClosed say why add refused a tunnel.
var (
	errPoolFull   = errors.New("tunnel pool full")
	errPeerShare  = errors.New("the peer holds its share of the tunnel pool")
	errPoolClosed = errors.New("shutting down")
)

// add puts t in the pool unless limit (when positive) tunnels are there
// already, or peerLimit (when positive) of t's peer, or the pool is closed.
func (ts *tunnelSet) add(t *tunnel, limit, peerLimit int) error {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.closed {
		return errPoolClosed
	}
	if limit > 0 && len(ts.list) >= limit {
		return errPoolFull
	}
	if peerLimit > 0 {
		n := 0
		for _, x := range ts.list {
			if x.peer == t.peer {
				n++
			}
		}
		if n >= peerLimit {
			return errPeerShare
		}
	}
	ts.list = append(ts.list, t)
	ts.notifyLocked()
	return nil
}

func (ts *tunnelSet) remove(t *tunnel) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for i, x := range ts.list {
		if x == t {
			ts.list = append(ts.list[:i], ts.list[i+1:]...)
			ts.notifyLocked()
			return
		}
	}
}

// pick returns the least-loaded live tunnel of a peer r allows that has
// room for another stream, or nil if none is up or has room. Ties go
// round-robin among the tied tunnels themselves, so sequential short
// connections spread evenly: rotating the start over the whole pool
// instead favoured the first allowed tunnel after a run of tunnels r does
// not allow (or dead ones).
func (ts *tunnelSet) pick(r Route) *tunnel {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var buf [8]*tunnel
	tied := buf[:0]
	var least int64
	for _, t := range ts.list {
		select {
		case <-t.s.Done():
			continue // dead, not yet removed
		default:
		}
		if !r.allows(t.peer) || t.full() {
			continue
		}
		switch n := t.active.Load(); {
		case len(tied) == 0 || n < least:
			least, tied = n, append(tied[:0], t)
		case n == least:
			tied = append(tied, t)
		}
	}
	if len(tied) == 0 {
		return nil
	}
	ts.next++
	return tied[ts.next%len(tied)]
}

func (ts *tunnelSet) snapshot() []*tunnel {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]*tunnel(nil), ts.list...)
}

func (ts *tunnelSet) active() int64 {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var n int64
	for _, t := range ts.list {
		n += t.active.Load()
	}
	return n
}

func (ts *tunnelSet) changedChan() <-chan struct{} {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.changed
}

// isClosed reports whether closeAll has run.
func (ts *tunnelSet) isClosed() bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.closed
}

func (ts *tunnelSet) closeAll() {
	ts.mu.Lock()
	ts.closed = true
	list := append([]*tunnel(nil), ts.list...)
	ts.mu.Unlock()
	for _, t := range list {
		t.closeFor(closeShutdown)
	}
}

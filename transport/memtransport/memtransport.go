// Package memtransport is an in-memory transport for unit tests, in the
// spirit of wireguard-go's conn/bindtest: listeners and dialers of one
// Transport value meet by address without sockets. A real TLS handshake and
// Config.Authenticate run over an in-memory connection, so Info is what the
// real transports report; streams then flow in memory with the real
// semantics: a bounded window per direction (writers block), half-close,
// reset, deadlines, a MaxStreams bound that blocks OpenStream as QUIC does,
// and a session whose Close reaches the peer.
package memtransport

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/internal/accept"
)

// Name is the transport's name.
const Name = "mem"

// errRefused is what dialling an address nobody listens on returns, as a
// TCP dial would.
var errRefused = syscall.ECONNREFUSED

// controlWindow is what each direction of the handshake connection holds;
// a TLS flight and a proof fit, so neither side blocks the other.
const controlWindow = 256 << 10

// Transport is one in-memory network. Use New; values are not shared
// between tests unless the tests share them.
type Transport struct {
	mu        sync.Mutex
	listeners map[string]*listener
	nextPort  int
}

var _ transport.Transport = (*Transport)(nil)

// New returns an empty network.
func New() *Transport { return &Transport{listeners: map[string]*listener{}} }

func (t *Transport) Name() string { return Name }

// port returns a fresh port number.
func (t *Transport) portLocked() string {
	t.nextPort++
	return strconv.Itoa(t.nextPort)
}

// Listen serves addr, a "host:port"; port 0 picks a free port.
func (t *Transport) Listen(address string, c *transport.Config) (transport.Listener, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", Name, address, err)
	}
	c = c.WithDefaults()
	t.mu.Lock()
	defer t.mu.Unlock()
	if port == "0" {
		port = t.portLocked()
	}
	a := net.JoinHostPort(host, port)
	if _, taken := t.listeners[a]; taken {
		return nil, fmt.Errorf("listen %s %s: %w", Name, a, syscall.EADDRINUSE)
	}
	l := &listener{Core: accept.New(c.MaxHandshakes), t: t, addr: addr(a), c: c}
	t.listeners[a] = l
	return l, nil
}

// Dial connects to the listener at address.
func (t *Transport) Dial(ctx context.Context, address string, c *transport.Config) (transport.Session, error) {
	c = c.WithDefaults()
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.HandshakeTimeout)
	defer cancel()
	t.mu.Lock()
	l := t.listeners[address]
	local := addr(net.JoinHostPort("client", t.portLocked()))
	t.mu.Unlock()
	if l == nil {
		return nil, transport.NewHandshakeError(Name, transport.StageConnect, refused(address))
	}
	cc, sc := connPair(controlWindow, local, l.addr)
	lk := newLink()
	if !l.offer(sc, lk) {
		return nil, transport.NewHandshakeError(Name, transport.StageConnect, refused(address))
	}
	s, err := handshake(ctx, cc, lk, c, true, start)
	if err != nil {
		_ = cc.Close() // the handshake error is what matters
		return nil, err
	}
	return s, nil
}

// listener accepts in-memory connections, at most MaxHandshakes in progress.
type listener struct {
	*accept.Core
	t    *Transport
	addr addr
	c    *transport.Config
}

// offer starts the server side of a handshake on sc; false means the
// listener is closed. A listener that is busy refuses by closing sc, as
// the real ones shed load.
func (l *listener) offer(sc *conn, lk *link) bool {
	select {
	case <-l.Closed():
		return false
	default:
	}
	release, ok := l.Acquire(sc.RemoteAddr())
	if !ok {
		l.c.HandshakeFailed(sc.RemoteAddr(), transport.NewHandshakeError(Name, transport.StageAccept, transport.ErrBusy))
		_ = sc.Close() // shed load
		return true
	}
	l.WG.Add(1)
	go l.routineHandshake(sc, lk, release)
	return true
}

func (l *listener) routineHandshake(sc *conn, lk *link, release func()) {
	defer l.WG.Done()
	start := time.Now()
	ctx, cancel := context.WithTimeout(l.Ctx, l.c.HandshakeTimeout)
	stop := context.AfterFunc(ctx, func() { sc.abort(ctx.Err()) })
	s, err := handshake(ctx, sc, lk, l.c, false, start)
	if !stop() && err == nil {
		_ = s.Close()
		err = transport.NewHandshakeError(Name, transport.StageTLS, fmt.Errorf("handshake: %w", ctx.Err()))
	}
	cancel()
	release()
	if err != nil {
		l.c.HandshakeFailed(sc.RemoteAddr(), err)
		_ = sc.Close()
		return
	}
	l.Deliver(s)
}

func (l *listener) Addr() net.Addr    { return l.addr }
func (l *listener) Transport() string { return Name }

func (l *listener) Close() error {
	return l.Shutdown(func() error {
		l.t.mu.Lock()
		delete(l.t.listeners, string(l.addr))
		l.t.mu.Unlock()
		return nil
	})
}

// handshake runs TLS and the authenticator over ctl, then joins lk on the
// client's (0) or the server's (1) side.
func handshake(ctx context.Context, ctl *conn, lk *link, c *transport.Config, client bool, start time.Time) (*session, error) {
	tc := tls.Server(ctl, c.TLS)
	if client {
		tc = tls.Client(ctl, c.TLS)
	}
	deadline, _ := ctx.Deadline()
	_ = tc.SetDeadline(deadline) // a failing deadline shows up as a failing handshake
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, transport.NewHandshakeError(Name, transport.StageTLS, fmt.Errorf("tls handshake: %w", err))
	}
	cs := tc.ConnectionState()
	peer, err := c.AuthenticatePeer(ctx, &cs, tc, client)
	if err != nil {
		return nil, transport.NewHandshakeError(Name, transport.StageAuthenticate, fmt.Errorf("authenticate peer: %w", err))
	}
	_ = tc.SetDeadline(time.Time{})
	side := 1
	if client {
		side = 0
	}
	s := &session{lk: lk, side: side, info: transport.Info{
		Transport: Name, TLS: cs, Peer: peer,
		Local: ctl.LocalAddr(), Remote: ctl.RemoteAddr(), Handshake: time.Since(start),
	}}
	if !lk.join(side, c, tc) {
		return nil, transport.NewHandshakeError(Name, transport.StageAuthenticate, fmt.Errorf("join session: %w", net.ErrClosed))
	}
	// The control connection stays open for the session's life: the peer
	// closing it, or failing its own handshake, ends the session.
	go func() {
		defer lk.wg.Done()
		_, _ = io.Copy(io.Discard, tc) // ends when either side closes
		lk.shutdown(-1)
	}()
	return s, nil
}

// link is what the two sessions of one connection share.
type link struct {
	mu      sync.Mutex
	joined  [2]bool
	windows [2]int           // each side's StreamWindow
	slots   [2]chan struct{} // streams open toward each side, up to its MaxStreams
	queues  [2]chan *end     // streams waiting for each side's AcceptStream
	ready   chan struct{}    // closed once both sides joined
	done    chan struct{}
	once    sync.Once
	ctls    []*tls.Conn // the control connections of the sides that joined
	streams map[*end]struct{}
	wg      sync.WaitGroup
	// closedBy is the side whose Close ended the link, or -1 when none did
	// (the control connection failed); set before done is closed.
	closedBy int
}

func newLink() *link {
	return &link{ready: make(chan struct{}), done: make(chan struct{}), streams: map[*end]struct{}{}, closedBy: -1}
}

// join adds a side whose handshake succeeded and counts its control reader
// in wg; it returns false if the peer has closed the link meanwhile. wg.Add
// happens under mu and before shutdown marks the link done, so it never
// races with shutdown's Wait.
func (lk *link) join(side int, c *transport.Config, ctl *tls.Conn) bool {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	select {
	case <-lk.done:
		return false
	default:
	}
	lk.wg.Add(1)
	lk.joined[side] = true
	lk.ctls = append(lk.ctls, ctl)
	lk.windows[side] = c.StreamWindow
	lk.slots[side] = make(chan struct{}, c.MaxStreams)
	lk.queues[side] = make(chan *end, c.MaxStreams)
	if lk.joined[0] && lk.joined[1] {
		close(lk.ready)
	}
	return true
}

// shutdown ends the connection: streams fail, both sessions are Done.
// shutdown ends the link; by is the side that closed it, or -1.
func (lk *link) shutdown(by int) {
	lk.once.Do(func() {
		lk.mu.Lock()
		lk.closedBy = by
		close(lk.done)
		streams := lk.streams
		lk.streams = nil
		ctls := lk.ctls
		lk.mu.Unlock()
		for e := range streams {
			e.abort(fmt.Errorf("memtransport: session closed: %w", net.ErrClosed))
		}
		for _, c := range ctls {
			_ = c.NetConn().Close() // unblocks the control readers
		}
	})
}

// forget drops a finished stream end from the set shutdown aborts.
func (lk *link) forget(e *end) {
	lk.mu.Lock()
	delete(lk.streams, e)
	lk.mu.Unlock()
}

// session is one side of a link.
type session struct {
	lk   *link
	side int
	info transport.Info
}

// OpenStream blocks while the peer's MaxStreams streams are open, until ctx ends.
func (s *session) OpenStream(ctx context.Context) (transport.Stream, error) {
	lk := s.lk
	peer := 1 - s.side
	select {
	case <-lk.ready:
	case <-lk.done:
		return nil, fmt.Errorf("open %s stream: %w", Name, net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("open %s stream: %w", Name, ctx.Err())
	}
	select {
	case lk.slots[peer] <- struct{}{}:
	case <-lk.done:
		return nil, fmt.Errorf("open %s stream: %w", Name, net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("open %s stream: %w", Name, ctx.Err())
	}
	// Each direction holds what its receiver's window allows.
	mine, theirs := newStream(lk.windows[peer])
	mine.in.window = lk.windows[s.side]
	slots := lk.slots[peer]
	mine.done = func() { lk.forget(mine) }
	theirs.done = func() {
		lk.forget(theirs)
		<-slots
	}
	lk.mu.Lock()
	if lk.streams == nil {
		lk.mu.Unlock()
		<-slots
		return nil, fmt.Errorf("open %s stream: %w", Name, net.ErrClosed)
	}
	lk.streams[mine] = struct{}{}
	lk.streams[theirs] = struct{}{}
	lk.mu.Unlock()
	lk.queues[peer] <- theirs // never blocks: a slot was taken
	return mine, nil
}

func (s *session) AcceptStream(ctx context.Context) (transport.Stream, error) {
	select {
	case <-s.lk.ready:
	case <-s.lk.done:
		return nil, s.closedErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case e := <-s.lk.queues[s.side]:
		return e, nil
	case <-s.lk.done:
		return nil, s.closedErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// closedErr is AcceptStream's error once the link is done.
func (s *session) closedErr() error {
	s.lk.mu.Lock()
	by := s.lk.closedBy
	s.lk.mu.Unlock()
	reason := transport.CloseTransportError
	switch by {
	case s.side:
		reason = transport.CloseLocal
	case 1 - s.side:
		reason = transport.ClosePeer
	}
	return fmt.Errorf("accept %s stream: %w: %w", Name, net.ErrClosed, &transport.ClosedError{Reason: reason, Err: net.ErrClosed})
}

// Close ends the session on both sides and waits for its goroutines.
func (s *session) Close() error {
	s.lk.shutdown(s.side)
	s.lk.wg.Wait()
	return nil
}

func (s *session) Done() <-chan struct{} { return s.lk.done }
func (s *session) Info() transport.Info  { return s.info }

// StreamBound is this side's MaxStreams; see transport.SessionStreamBound.
func (s *session) StreamBound() transport.StreamBound {
	return transport.StreamBound{Streams: cap(s.lk.slots[s.side])}
}

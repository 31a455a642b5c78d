// Package tlsmux is the "tcp" transport: TLS 1.3 over TCP, with the
// connection's streams multiplexed by yamux.
package tlsmux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-yamux/v5"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/internal/accept"
)

// Name is the transport's PQT_TRANSPORT value.
const Name = "tcp"

// Transport is TLS over TCP with yamux; the zero value is ready to use.
type Transport struct{}

var _ transport.Transport = Transport{}

func (Transport) Name() string { return Name }

func (Transport) Dial(ctx context.Context, addr string, c *transport.Config) (transport.Session, error) {
	return Dial(ctx, addr, c)
}

func (Transport) Listen(addr string, c *transport.Config) (transport.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen tcp %s: %w", addr, err)
	}
	return Listen(ln, c), nil
}

// c has its defaults applied; mem is the session's memory bound.
func yamuxConfig(c *transport.Config, mem *connMemory) *yamux.Config {
	y := yamux.DefaultConfig()
	y.AcceptBacklog = 256
	y.EnableKeepAlive = true
	y.KeepAliveInterval = c.KeepAlive
	if ackWatch && c.ProbeInterval() > 0 {
		// watchAcks pings instead and judges by the kernel's
		// acknowledgements: yamux's own keep-alive would end a live but
		// busy connection whose pong comes late behind its data.
		y.EnableKeepAlive = false
	}
	// A keep-alive ping waits this long for its answer, so a silent peer is
	// declared dead about IdleTimeout after it went quiet.
	y.ConnectionWriteTimeout = max(c.IdleTimeout-c.KeepAlive, c.KeepAlive)
	y.MaxIncomingStreams = uint32(mem.peerStreams)
	y.MaxStreamWindowSize = uint32(c.StreamWindow)
	y.InitialStreamWindowSize = uint32(mem.window)
	// yamux doubles a stream's window while its updates come within four
	// RTTs of each other, by the RTT its pings measured. Measured only
	// every 30 s (its default), a tunnel that came up over a short path
	// keeps that RTT when the path grows longer, and its streams stay at
	// 256 KiB: 3 MB/s at 80 ms. Measured as often as the keep-alive
	// probes go out, the estimate follows within a few seconds.
	y.MeasureRTTInterval = c.RTTInterval()
	// Frames are written as soon as they are ready: waiting to coalesce
	// would add latency to every small request. Frames that are ready
	// together leave together all the same (groupWriter).
	y.WriteCoalesceDelay = 0
	y.ReadBufSize = 64 << 10
	// A frame carries what one copy-loop read returns (up to 256 KiB in
	// bulk), so the bytes cross the tunnel in one frame, one hand-off to the
	// send loop and one write; 12 is yamux's header.
	y.MaxMessageSize = 256<<10 + 12
	y.LogOutput = io.Discard
	return y
}

// Dial connects to addr over TCP, runs the TLS handshake and the
// authenticator, and starts a yamux client session.
func Dial(ctx context.Context, addr string, c *transport.Config) (transport.Session, error) {
	c = c.WithDefaults()
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, transport.NewHandshakeError(Name, transport.StageConnect, fmt.Errorf("dial tcp %s: %w", addr, err))
	}
	tuneSocket(raw, c)
	conn := raw
	if c.WrapConn != nil {
		conn = c.WrapConn(raw)
	}
	redial := func(ctx context.Context) (transport.Session, error) { return Dial(ctx, addr, c) }
	s, err := handshakeTCP(ctx, raw, newRecordConn(conn), c, redial, start)
	if err != nil {
		_ = raw.Close() // the handshake error is what matters
		return nil, transport.NewHandshakeError(Name, transport.StageTLS, err)
	}
	watchAcks(s, raw, c)
	return s, nil
}

// handshakeTCP runs the handshake on rc, which reads and writes the socket
// raw (through c.WrapConn, if set): as the client when it has redial, which
// dials the session's successor once the path's RTT grew, as the server
// otherwise.
func handshakeTCP(ctx context.Context, raw net.Conn, rc *recordConn, c *transport.Config, redial func(context.Context) (transport.Session, error), start time.Time) (*tcpSession, error) {
	client := redial != nil
	tc := tls.Server(rc, c.TLS)
	if client {
		tc = tls.Client(rc, c.TLS)
	}
	deadline, _ := ctx.Deadline()
	_ = tc.SetDeadline(deadline) // a failing deadline shows up as a failing handshake
	if err := tc.HandshakeContext(ctx); err != nil {
		// crypto/tls says which alert it sent only on QUIC; the record
		// layer saw it here, and it tells a group refusal from others.
		if a, ok := rc.sentAlert(); ok {
			err = fmt.Errorf("%w%.0w", err, tls.AlertError(a))
		}
		return nil, transport.NewHandshakeError(Name, transport.StageTLS, fmt.Errorf("tls handshake: %w", err))
	}
	rc.handshakeDone()
	cs := tc.ConnectionState()
	peer, err := c.AuthenticatePeer(ctx, &cs, tc, client)
	if err != nil {
		return nil, transport.NewHandshakeError(Name, transport.StageAuthenticate, fmt.Errorf("authenticate peer: %w", withAlert(tc, err)))
	}
	_ = tc.SetDeadline(time.Time{}) // yamux keep-alives take over liveness
	// The handshake's round trips have given the kernel the path's RTT,
	// which sizes the streams' initial windows.
	rtt := pathRTT(raw)
	mem := newConnMemory(c.MaxConnMemory, c.MaxStreams, c.StreamWindow, rtt)
	bt := &batchedTLS{tc, rc}
	gw := newGroupWriter(bt, bt)
	var ys *yamux.Session
	if client {
		ys, err = yamux.Client(gw, yamuxConfig(c, mem), mem.span)
	} else {
		ys, err = yamux.Server(gw, yamuxConfig(c, mem), mem.span)
	}
	if err != nil {
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	growth := transport.NewRTTGrowth(Name, rtt, redial, handshakeRTT, c.Logger)
	s := &tcpSession{ys: ys, gw: gw, mem: mem, rc: rc, rtt: rtt, growth: growth, info: transport.Info{
		Transport: Name,
		TLS:       cs,
		Peer:      peer,
		Local:     tc.LocalAddr(),
		Remote:    tc.RemoteAddr(),
		Handshake: time.Since(start),
	}}
	return s, nil
}

type tcpSession struct {
	ys   *yamux.Session
	gw   *groupWriter
	mem  *connMemory
	info transport.Info

	mu      sync.Mutex
	pending chan acceptResult // an accept whose caller gave up

	rc *recordConn
	// lost is why watchAcks closed the session, when it did.
	lost atomic.Pointer[transport.CloseReason]
	wg   sync.WaitGroup // watchAcks, and a successor's dial

	// rtt is the path's RTT the windows were sized by (zero: unknown).
	rtt time.Duration
	// growth replaces a session this side dialled once its path's RTT grew,
	// and on either side tells watchAcks (Linux, where it reads the RTT)
	// when to move the socket off BBR.
	growth *transport.RTTGrowth
}

// handshakeRTT is the RTT a session of Dial's came up over.
func handshakeRTT(s transport.Session) time.Duration {
	if ts, ok := s.(*tcpSession); ok {
		return ts.rtt
	}
	return 0
}

// Superseded offers, at most once, a new connection to the same address
// once the path's RTT grew well past the one this connection came up
// over; see transport.RTTGrowth.
func (s *tcpSession) Superseded() <-chan transport.Succession {
	return s.growth.Superseded()
}

// OpenStream does not block at the peer's MaxStreams: yamux has no stream
// credit, so the peer resets streams past its limit instead.
func (s *tcpSession) OpenStream(ctx context.Context) (transport.Stream, error) {
	if !s.mem.reserveOpen() {
		return nil, fmt.Errorf("open yamux stream: %w", errConnMemory)
	}
	st, err := s.ys.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("open yamux stream: %w", err)
	}
	return newTCPStream(st, s, true), nil
}

func (s *tcpSession) AcceptStream(ctx context.Context) (transport.Stream, error) {
	// yamux's AcceptStream takes no context: it runs in a goroutine, and a
	// call abandoned by its ctx hands its result to the next call, so no
	// stream is lost. A context that cannot end needs no goroutine, which
	// saves a hand-off per stream.
	s.mu.Lock()
	if ctx.Done() == nil && s.pending == nil {
		s.mu.Unlock()
		return s.accepted(s.ys.AcceptStream())
	}
	res := s.pending
	if res == nil {
		res = make(chan acceptResult, 1)
		go func() {
			st, err := s.ys.AcceptStream()
			res <- acceptResult{st, err}
		}()
	}
	s.pending = nil
	s.mu.Unlock()
	select {
	case r := <-res:
		return s.accepted(r.st, r.err)
	case <-ctx.Done():
		s.mu.Lock()
		s.pending = res
		s.mu.Unlock()
		return nil, ctx.Err()
	}
}

func (s *tcpSession) accepted(st *yamux.Stream, err error) (transport.Stream, error) {
	if err != nil {
		if s.ys.IsClosed() || errors.Is(err, io.EOF) {
			reason := closeReason(err)
			if r := s.lost.Load(); r != nil {
				reason = *r
			}
			return nil, fmt.Errorf("accept yamux stream: %w: %w", net.ErrClosed, &transport.ClosedError{Reason: reason, Err: err})
		}
		return nil, fmt.Errorf("accept yamux stream: %w", err)
	}
	return newTCPStream(st, s, false), nil
}

type acceptResult struct {
	st  *yamux.Stream
	err error
}

// Close closes the session and a successor offered that nobody took.
func (s *tcpSession) Close() error {
	err := s.ys.Close()
	s.wg.Wait() // watchAcks and a successor's dial end with the session
	s.growth.Drop()
	return err
}

func (s *tcpSession) Done() <-chan struct{} { return s.ys.CloseChan() }
func (s *tcpSession) Info() transport.Info  { return s.info }

// StreamBound is the peer's stream count, which also leaves room for as
// many streams of ours under the memory bound; see transport.SessionStreamBound.
func (s *tcpSession) StreamBound() transport.StreamBound {
	return transport.StreamBound{Streams: s.mem.peerStreams, ByMemory: s.mem.byMemory, Opens: s.mem.opens}
}

type tcpStream struct {
	*yamux.Stream
	gw *groupWriter
	// opened is set for a stream this side opened; heard once a Read
	// returned bytes (Read and Write may run on different goroutines).
	opened bool
	heard  atomic.Bool

	// For Write's wait on the session's backlog (groupWriter.waitRoom):
	// the write deadline, and done, closed by Close and Reset.
	writeDeadline atomic.Pointer[time.Time]
	done          chan struct{}
	doneOnce      sync.Once
	sessionDone   <-chan struct{}
}

func newTCPStream(st *yamux.Stream, s *tcpSession, opened bool) *tcpStream {
	return &tcpStream{Stream: st, gw: s.gw, opened: opened, done: make(chan struct{}), sessionDone: s.ys.CloseChan()}
}

// resetCode is the error code of the resets pqtunnel sends. yamux refuses
// a stream it will not take (over MaxIncomingStreams, a full accept
// queue, going away) with a reset of code 0; a different code for
// pqtunnel's own resets lets the opener tell those refusals from a reset
// by the peer's application.
const resetCode = 1

// Read marks a stream this side opened that the peer's yamux reset before
// it sent anything as refused (transport.ErrStreamRefused); so does Write.
func (t *tcpStream) Read(p []byte) (int, error) {
	n, err := t.Stream.Read(p)
	if n > 0 {
		t.heard.Store(true)
	} else if err != nil {
		err = t.refusal(err)
	}
	return n, err
}

// refusal marks err as transport.ErrStreamRefused where the peer's yamux
// reset a stream this side opened before the peer sent anything.
func (t *tcpStream) refusal(err error) error {
	if t.opened && !t.heard.Load() && refusedByPeer(err) {
		return fmt.Errorf("%w (%w)", transport.ErrStreamRefused, err)
	}
	return err
}

// refusedByPeer reports whether err is a reset of code 0 from the peer.
func refusedByPeer(err error) bool {
	var se *yamux.StreamError
	return errors.As(err, &se) && se.Remote && se.ErrorCode == 0
}

// Write tells the session's groupWriter what yamux queued, so that it can
// hold a frame while others wait behind it. A large write first waits
// while the session's backlog is full, so that it does not queue ahead of
// other streams' small ones (see maxBacklog); on a long path it goes in
// pieces of longPathWrite, each waiting in turn, so that a 256 KiB write
// does not land whole on a backlog just under the bound.
func (t *tcpStream) Write(p []byte) (int, error) {
	if len(p) <= smallWrite {
		return t.write(p)
	}
	var deadline time.Time
	if d := t.writeDeadline.Load(); d != nil {
		deadline = *d
	}
	written := 0
	for len(p) > 0 {
		piece := p
		if len(piece) > longPathWrite && t.gw.longPath.Load() {
			piece = piece[:longPathWrite]
		}
		if err := t.gw.waitRoom(deadline, t.done, t.sessionDone); err != nil {
			return written, err
		}
		n, err := t.write(piece)
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// write hands p to yamux and counts what it queued.
func (t *tcpStream) write(p []byte) (int, error) {
	n, err := t.Stream.Write(p)
	t.gw.streamWrote(n)
	if err != nil {
		// A refusal that came back before this write went is told as
		// one here too, not only by Read.
		err = t.refusal(err)
	}
	return n, err
}

func (t *tcpStream) SetWriteDeadline(d time.Time) error {
	t.writeDeadline.Store(&d)
	return t.Stream.SetWriteDeadline(d)
}

func (t *tcpStream) SetDeadline(d time.Time) error {
	t.writeDeadline.Store(&d)
	return t.Stream.SetDeadline(d)
}

func (t *tcpStream) end() { t.doneOnce.Do(func() { close(t.done) }) }

// Reset aborts both directions; the peer's reads and writes fail at once.
func (t *tcpStream) Reset() {
	t.end()
	_ = t.Stream.ResetWithError(resetCode)
}

func (t *tcpStream) Close() error {
	t.end()
	return t.Stream.Close()
}

// tcpListener accepts TLS over TCP and runs handshakes concurrently, at most
// MaxHandshakes at a time, so a slow peer cannot stall the others.
type tcpListener struct {
	*accept.Core
	ln net.Listener
	c  *transport.Config
}

// Listen serves tunnel connections on ln, which the listener owns.
func Listen(ln net.Listener, c *transport.Config) transport.Listener {
	c = c.WithDefaults()
	l := &tcpListener{Core: accept.New(c.MaxHandshakes), ln: ln, c: c}
	l.WG.Add(1)
	go l.routineAccept()
	return l
}

func (l *tcpListener) routineAccept() {
	defer l.WG.Done()
	backoff := 5 * time.Millisecond
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.Closed():
				return
			default:
			}
			l.c.Logger.Warn("tunnel accept failed", "transport", Name, "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		tuneSocket(raw, l.c)
		release, ok := l.Acquire(raw.RemoteAddr())
		if !ok {
			l.c.HandshakeFailed(raw.RemoteAddr(), transport.NewHandshakeError(Name, transport.StageAccept, transport.ErrBusy))
			_ = raw.Close() // shed load
			continue
		}
		l.WG.Add(1)
		go l.routineHandshake(raw, release)
	}
}

// firstRecordTimeout bounds the wait for a new connection's first TLS
// record (the ClientHello), when HandshakeTimeout is longer: a socket that
// sends nothing must not hold a handshake slot for the whole handshake timeout.
const firstRecordTimeout = 2 * time.Second

func (l *tcpListener) routineHandshake(raw net.Conn, release func()) {
	defer l.WG.Done()
	start := time.Now()
	ctx, cancel := context.WithTimeout(l.Ctx, l.c.HandshakeTimeout)
	// Closing the socket is what unblocks a stalled peer, at the timeout or
	// when the listener closes.
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	rc := newRecordConn(raw)
	err := rc.awaitFirstRecord(start.Add(min(firstRecordTimeout, l.c.HandshakeTimeout)))
	if err != nil && ctx.Err() != nil {
		// The timeout closed the socket under the read: the error says
		// "closed", the cause is the timeout.
		err = fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	var s *tcpSession
	refused := false // the peer spoke TLS and this side refused it
	if err == nil {
		s, err = handshakeTCP(ctx, raw, rc, l.c, nil, start)
		refused = err != nil
	}
	if !stop() && err == nil {
		_ = s.Close()
		err = transport.NewHandshakeError(Name, transport.StageTLS, fmt.Errorf("handshake: %w", ctx.Err()))
	}
	// Only a refusal the peer should read lingers; a socket that sent no
	// ClientHello, or a handshake cut by the timeout or the listener's
	// close, is closed at once.
	if refused && ctx.Err() == nil {
		lingerClose(raw)
	}
	cancel()
	release()
	if err != nil {
		l.c.HandshakeFailed(raw.RemoteAddr(), transport.NewHandshakeError(Name, transport.StageTLS, err))
		_ = raw.Close()
		return
	}
	watchAcks(s, raw, l.c)
	l.Deliver(s)
}

// lingerTimeout bounds how long a refused connection is drained before it
// is closed; the handshake slot stays taken meanwhile, so MaxHandshakes
// bounds the lingering connections too.
const lingerTimeout = 250 * time.Millisecond

// lingerClose ends a refused connection so that the peer can read why: a
// TLS 1.3 client has finished its handshake and sent its session proof
// before it can learn that its certificate was refused, and closing a
// socket with that proof unread makes the kernel answer with a reset,
// which throws away the alert the client has not read yet ("send proof:
// broken pipe" instead of "the peer refused our identity"). So it sends
// FIN after the alert and reads what the client still sends, for a moment,
// before the caller closes the socket.
func lingerClose(raw net.Conn) {
	cw, ok := raw.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	_ = raw.SetReadDeadline(time.Now().Add(lingerTimeout)) // the deadline ends the drain
	_, _ = io.CopyN(io.Discard, raw, 64<<10)               // until EOF, the deadline or 64 KiB: what is read is discarded
}

func (l *tcpListener) Transport() string { return Name }
func (l *tcpListener) Addr() net.Addr    { return l.ln.Addr() }
func (l *tcpListener) Close() error      { return l.Shutdown(l.ln.Close) }

// withAlert adds the peer's TLS alert to err when there is one to read. A
// TLS 1.3 server checks the client's certificate after the client has
// finished its handshake, so a refusal surfaces as a failed proof exchange;
// the alert says why.
func withAlert(tc *tls.Conn, err error) error {
	_ = tc.SetReadDeadline(time.Now().Add(250 * time.Millisecond)) // best effort
	var b [1]byte
	if _, rerr := tc.Read(b[:]); rerr != nil {
		if _, ok := transport.PeerAlertOf(rerr); ok {
			return fmt.Errorf("%w (%w)", err, rerr)
		}
	}
	return err
}

// closeReason says why a session ended, from the error yamux ended it
// with: its own, or the TLS connection's, or the socket's.
func closeReason(err error) transport.CloseReason {
	if ga, ok := errors.AsType[*yamux.GoAwayError](err); ok {
		if ga.Remote {
			return transport.ClosePeer
		}
		return transport.CloseLocal
	}
	switch {
	case errors.Is(err, io.EOF):
		return transport.ClosePeer // the peer's close_notify, or its FIN
	case errors.Is(err, yamux.ErrKeepAliveTimeout), errors.Is(err, yamux.ErrConnectionWriteTimeout),
		errors.Is(err, syscall.ETIMEDOUT): // the kernel gave up retransmitting
		return transport.CloseKeepAliveLost
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return transport.CloseConnReset
	}
	if _, ok := transport.PeerAlertOf(err); ok {
		return transport.CloseTLS
	}
	if _, ok := errors.AsType[tls.AlertError](err); ok {
		return transport.CloseTLS
	}
	if errors.Is(err, net.ErrClosed) {
		return transport.CloseLocal
	}
	return transport.CloseTransportError
}

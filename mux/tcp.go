package mux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-yamux/v5"
)

// TransportTCP names TLS 1.3 over TCP with yamux.
const TransportTCP = "tcp"

func (c *Config) yamuxConfig() *yamux.Config {
	y := yamux.DefaultConfig()
	y.AcceptBacklog = 256
	y.EnableKeepAlive = true
	y.KeepAliveInterval = c.keepAlive()
	// A keep-alive ping waits this long for its answer, so a silent peer is
	// declared dead about IdleTimeout after it went quiet.
	y.ConnectionWriteTimeout = max(c.idleTimeout()-c.keepAlive(), c.keepAlive())
	y.MaxIncomingStreams = uint32(c.maxStreams())
	y.MaxStreamWindowSize = uint32(c.streamWindow())
	// Frames are written as soon as they are ready: waiting to coalesce
	// would add latency to every small request.
	y.WriteCoalesceDelay = 0
	y.ReadBufSize = 64 << 10
	// A frame carries what one copy-loop read returns (up to 256 KiB in
	// bulk), so the bytes cross the tunnel in one frame, one hand-off to the
	// send loop and one write; 12 is yamux's header.
	y.MaxMessageSize = 256<<10 + 12
	y.LogOutput = io.Discard
	return y
}

// DialTCP connects to addr over TCP, runs the TLS handshake and the
// authenticator, and starts a yamux client session.
func DialTCP(ctx context.Context, addr string, c *Config) (Session, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.handshakeTimeout())
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial tcp %s: %w", addr, err)
	}
	conn := raw
	if c.WrapConn != nil {
		conn = c.WrapConn(raw)
	}
	s, err := handshakeTCP(ctx, newRecordConn(conn), c, true, start)
	if err != nil {
		_ = raw.Close() // the handshake error is what matters
		return nil, err
	}
	return s, nil
}

func handshakeTCP(ctx context.Context, rc *recordConn, c *Config, client bool, start time.Time) (Session, error) {
	tc := tls.Server(rc, c.TLS)
	if client {
		tc = tls.Client(rc, c.TLS)
	}
	deadline, _ := ctx.Deadline()
	_ = tc.SetDeadline(deadline) // a failing deadline shows up as a failing handshake
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	cs := tc.ConnectionState()
	peer, err := c.authenticate(&cs, tc, client)
	if err != nil {
		return nil, fmt.Errorf("authenticate peer: %w", withAlert(tc, err))
	}
	_ = tc.SetDeadline(time.Time{}) // yamux keep-alives take over liveness
	var ys *yamux.Session
	if client {
		ys, err = yamux.Client(&batchedTLS{tc, rc}, c.yamuxConfig(), nil)
	} else {
		ys, err = yamux.Server(&batchedTLS{tc, rc}, c.yamuxConfig(), nil)
	}
	if err != nil {
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	s := &tcpSession{ys: ys, info: Info{
		Transport: TransportTCP,
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
	info Info

	mu      sync.Mutex
	pending chan acceptResult // an accept whose caller gave up
}

// OpenStream does not block at the peer's MaxStreams: yamux has no stream
// credit, so the peer resets streams past its limit instead.
func (s *tcpSession) OpenStream(ctx context.Context) (Stream, error) {
	st, err := s.ys.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("open yamux stream: %w", err)
	}
	return &tcpStream{st}, nil
}

func (s *tcpSession) AcceptStream(ctx context.Context) (Stream, error) {
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

func (s *tcpSession) accepted(st *yamux.Stream, err error) (Stream, error) {
	if err != nil {
		if s.ys.IsClosed() || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("accept yamux stream: %w: %w", net.ErrClosed, err)
		}
		return nil, fmt.Errorf("accept yamux stream: %w", err)
	}
	return &tcpStream{st}, nil
}

type acceptResult struct {
	st  *yamux.Stream
	err error
}

func (s *tcpSession) Close() error          { return s.ys.Close() }
func (s *tcpSession) Done() <-chan struct{} { return s.ys.CloseChan() }
func (s *tcpSession) Info() Info            { return s.info }

type tcpStream struct{ *yamux.Stream }

// Reset aborts both directions; the peer's reads and writes fail at once.
func (t *tcpStream) Reset() { _ = t.Stream.Reset() }

// tcpListener accepts TLS over TCP and runs handshakes concurrently, at most
// MaxHandshakes at a time, so a slow peer cannot stall the others.
type tcpListener struct {
	*listenerCore
	ln net.Listener
	c  *Config
}

// ListenTCP serves tunnel connections on ln, which the listener owns.
func ListenTCP(ln net.Listener, c *Config) Listener {
	l := &tcpListener{listenerCore: newListenerCore(c), ln: ln, c: c}
	l.wg.Add(1)
	go l.routineAccept()
	return l
}

func (l *tcpListener) routineAccept() {
	defer l.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.q.closed:
				return
			default:
			}
			l.c.logger().Warn("tunnel accept failed", "transport", TransportTCP, "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		select {
		case l.sem <- struct{}{}:
		default:
			l.c.handshakeFailed(raw.RemoteAddr(), ErrBusy)
			_ = raw.Close() // shed load
			continue
		}
		l.wg.Add(1)
		go l.routineHandshake(raw)
	}
}

func (l *tcpListener) routineHandshake(raw net.Conn) {
	defer l.wg.Done()
	start := time.Now()
	ctx, cancel := context.WithTimeout(l.ctx, l.c.handshakeTimeout())
	// Closing the socket is what unblocks a stalled peer, at the timeout or
	// when the listener closes.
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	s, err := handshakeTCP(ctx, newRecordConn(raw), l.c, false, start)
	if !stop() && err == nil {
		_ = s.Close()
		err = fmt.Errorf("handshake: %w", ctx.Err())
	}
	cancel()
	<-l.sem
	if err != nil {
		l.c.handshakeFailed(raw.RemoteAddr(), err)
		_ = raw.Close()
		return
	}
	l.q.deliver(s)
}

func (l *tcpListener) Transport() string { return TransportTCP }
func (l *tcpListener) Addr() net.Addr    { return l.ln.Addr() }
func (l *tcpListener) Close() error      { return l.shutdown(l.ln.Close) }

// withAlert adds the peer's TLS alert to err when there is one to read. A
// TLS 1.3 server checks the client's certificate after the client has
// finished its handshake, so a refusal surfaces as a failed proof exchange;
// the alert says why.
func withAlert(tc *tls.Conn, err error) error {
	_ = tc.SetReadDeadline(time.Now().Add(250 * time.Millisecond)) // best effort
	var b [1]byte
	if _, rerr := tc.Read(b[:]); rerr != nil && strings.Contains(rerr.Error(), "remote error") {
		return fmt.Errorf("%w (%w)", err, rerr)
	}
	return err
}

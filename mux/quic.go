package mux

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// TransportQUIC names QUIC via quic-go.
const TransportQUIC = "quic"

// Application error codes on QUIC connections and streams.
const (
	codeNormal quic.ApplicationErrorCode = 0
	codeAuth   quic.ApplicationErrorCode = 1
	codeDone   quic.StreamErrorCode      = 0
	codeReset  quic.StreamErrorCode      = 1
)

func (c *Config) quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:       c.handshakeTimeout(),
		MaxIdleTimeout:             c.idleTimeout(),
		KeepAlivePeriod:            c.keepAlive(),
		MaxIncomingStreams:         int64(c.maxStreams()),
		MaxIncomingUniStreams:      -1,
		InitialStreamReceiveWindow: 512 << 10,
		MaxStreamReceiveWindow:     uint64(c.streamWindow()),
		// The connection window is shared by all streams: large enough that
		// a few busy streams do not starve each other.
		InitialConnectionReceiveWindow: 1 << 20,
		MaxConnectionReceiveWindow:     uint64(4 * c.streamWindow()),
	}
}

// DialQUIC connects to addr over QUIC, runs the authenticator on the first
// stream, and returns the session.
func DialQUIC(ctx context.Context, addr string, c *Config) (Session, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.handshakeTimeout())
	defer cancel()
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", addr, err)
	}
	var pc net.PacketConn
	// The local socket's family follows the peer's, so ::1 works.
	pc, err = net.ListenUDP("udp", nil)
	if err != nil {
		return nil, fmt.Errorf("open udp socket: %w", err)
	}
	if c.WrapPacketConn != nil {
		pc = c.WrapPacketConn(pc)
	}
	tr := &quic.Transport{Conn: pc}
	conn, err := tr.Dial(ctx, raddr, c.TLS, c.quicConfig())
	if err != nil {
		_ = tr.Close() // the handshake error is what matters
		_ = pc.Close()
		return nil, fmt.Errorf("quic handshake with %s: %w", addr, err)
	}
	s, err := authenticateQUIC(ctx, conn, c, true, start)
	if err != nil {
		_ = conn.CloseWithError(codeAuth, "authentication failed")
		_ = tr.Close()
		_ = pc.Close()
		return nil, err
	}
	s.release = func() {
		_ = tr.Close() // the dialler's own socket goes with its session
		_ = pc.Close()
	}
	return s, nil
}

// authenticateQUIC runs the authenticator on the first bidirectional
// stream, which the client opens; no other stream is accepted before it.
func authenticateQUIC(ctx context.Context, conn *quic.Conn, c *Config, client bool, start time.Time) (*quicSession, error) {
	var st *quic.Stream
	var err error
	if client {
		st, err = conn.OpenStreamSync(ctx)
	} else {
		st, err = conn.AcceptStream(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("authentication stream: %w", err)
	}
	deadline, _ := ctx.Deadline()
	_ = st.SetDeadline(deadline) // a failing deadline shows up as a failing read
	cs := conn.ConnectionState().TLS
	peer, err := c.authenticate(&cs, st, client)
	if err != nil {
		st.CancelRead(codeReset)
		st.CancelWrite(codeReset)
		return nil, fmt.Errorf("authenticate peer: %w", err)
	}
	_ = st.Close() // the proof is sent; the stream has done its job
	st.CancelRead(codeDone)
	return &quicSession{conn: conn, info: Info{
		Transport: TransportQUIC,
		TLS:       cs,
		Peer:      peer,
		Local:     conn.LocalAddr(),
		Remote:    conn.RemoteAddr(),
		Handshake: time.Since(start),
	}}, nil
}

type quicSession struct {
	conn *quic.Conn
	info Info
	// release frees the UDP socket behind the session once: a dialler's
	// own socket, or the session's reference to its listener's.
	release   func()
	closeOnce sync.Once
}

func (s *quicSession) OpenStream(ctx context.Context) (Stream, error) {
	st, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("open quic stream: %w", err)
	}
	return &quicStream{st}, nil
}

func (s *quicSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.conn.AcceptStream(ctx)
	if err != nil {
		if s.conn.Context().Err() != nil {
			return nil, fmt.Errorf("accept quic stream: %w: %w", net.ErrClosed, err)
		}
		return nil, fmt.Errorf("accept quic stream: %w", err)
	}
	return &quicStream{st}, nil
}

func (s *quicSession) Close() error {
	err := s.conn.CloseWithError(codeNormal, "closed")
	s.closeOnce.Do(func() {
		if s.release != nil {
			s.release()
		}
	})
	return err
}
func (s *quicSession) Done() <-chan struct{} { return s.conn.Context().Done() }
func (s *quicSession) Info() Info            { return s.info }

func (s *quicSession) stats() Stats {
	cs := s.conn.ConnectionStats()
	return Stats{RTT: cs.SmoothedRTT, PacketsLost: cs.PacketsLost}
}

type quicStream struct{ *quic.Stream }

// CloseWrite sends FIN: quic-go's Close ends the send direction only.
func (q *quicStream) CloseWrite() error { return q.Stream.Close() }

func (q *quicStream) Close() error {
	err := q.Stream.Close()
	q.Stream.CancelRead(codeDone)
	return err
}

func (q *quicStream) Reset() {
	q.Stream.CancelWrite(codeReset)
	q.Stream.CancelRead(codeReset)
}

// quicListener serves QUIC on one UDP socket; authentication of each new
// connection runs concurrently, at most MaxHandshakes at a time. Closing it
// stops accepting; the socket stays open for the sessions it returned until
// the last of them is closed, so they can drain.
type quicListener struct {
	refMu sync.Mutex
	refs  int // the listener itself plus each session handed out
	*listenerCore
	pc       net.PacketConn
	tr       *quic.Transport
	ln       *quic.Listener
	c        *Config
	closeRef sync.Once
}

// ListenQUIC serves tunnel connections on pc, which the listener owns.
func ListenQUIC(pc net.PacketConn, c *Config) (Listener, error) {
	tr := &quic.Transport{Conn: pc}
	ln, err := tr.Listen(c.TLS, c.quicConfig())
	if err != nil {
		_ = tr.Close() // the listen error is what matters
		return nil, fmt.Errorf("listen quic: %w", err)
	}
	l := &quicListener{listenerCore: newListenerCore(c), pc: pc, tr: tr, ln: ln, c: c, refs: 1}
	l.wg.Add(1)
	go l.routineAccept()
	return l, nil
}

func (l *quicListener) routineAccept() {
	defer l.wg.Done()
	for {
		conn, err := l.ln.Accept(l.ctx)
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) {
				return
			}
			l.c.logger().Warn("tunnel accept failed", "transport", TransportQUIC, "err", err)
			continue
		}
		select {
		case l.sem <- struct{}{}:
		default:
			l.c.handshakeFailed(conn.RemoteAddr(), ErrBusy)
			_ = conn.CloseWithError(codeAuth, "busy")
			continue
		}
		l.wg.Add(1)
		go l.routineAuthenticate(conn)
	}
}

func (l *quicListener) routineAuthenticate(conn *quic.Conn) {
	defer l.wg.Done()
	// quic-go reports the handshake done only after it completed, so the
	// time measured here is the authentication step.
	start := time.Now()
	ctx, cancel := context.WithTimeout(l.ctx, l.c.handshakeTimeout())
	s, err := authenticateQUIC(ctx, conn, l.c, false, start)
	cancel()
	<-l.sem
	if err != nil {
		l.c.handshakeFailed(conn.RemoteAddr(), err)
		_ = conn.CloseWithError(codeAuth, "authentication failed")
		return
	}
	l.refMu.Lock()
	l.refs++
	l.refMu.Unlock()
	s.release = l.unref
	l.q.deliver(s)
}

// unref drops one reference to the socket and closes it with the last.
func (l *quicListener) unref() {
	l.refMu.Lock()
	l.refs--
	last := l.refs == 0
	l.refMu.Unlock()
	if last {
		_ = l.tr.Close() // nothing uses the socket any more
		_ = l.pc.Close()
	}
}

func (l *quicListener) Transport() string { return TransportQUIC }
func (l *quicListener) Addr() net.Addr    { return l.ln.Addr() }

func (l *quicListener) Close() error {
	err := l.shutdown(l.ln.Close)
	l.closeRef.Do(l.unref)
	return err
}

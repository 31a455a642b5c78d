// Package quic is the "quic" transport: QUIC via quic-go, one QUIC stream
// per tunnel stream, the authenticator on the first one.
package quic

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/internal/accept"
)

// Name is the transport's PQT_TRANSPORT value.
const Name = "quic"

// Transport is QUIC; the zero value is ready to use.
type Transport struct{}

var _ transport.Transport = Transport{}

func (Transport) Name() string { return Name }

// UsesUDP is true: the host's UDP buffer sizes bound QUIC's throughput.
func (Transport) UsesUDP() bool { return true }

func (Transport) Dial(ctx context.Context, addr string, c *transport.Config) (transport.Session, error) {
	return Dial(ctx, addr, c)
}

func (Transport) Listen(addr string, c *transport.Config) (transport.Listener, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: %w", addr, err)
	}
	ln, err := Listen(pc, c)
	if err != nil {
		_ = pc.Close() // the listen error is what matters
		return nil, err
	}
	return ln, nil
}

// Application error codes on QUIC connections and streams.
const (
	codeNormal quic.ApplicationErrorCode = 0
	codeAuth   quic.ApplicationErrorCode = 1
	codeBusy   quic.ApplicationErrorCode = 2
	codeDone   quic.StreamErrorCode      = 0
	codeReset  quic.StreamErrorCode      = 1
)

// c has its defaults applied.
func quicConfig(c *transport.Config) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:       c.HandshakeTimeout,
		MaxIdleTimeout:             c.IdleTimeout,
		KeepAlivePeriod:            c.KeepAlive,
		MaxIncomingStreams:         int64(c.MaxStreams),
		MaxIncomingUniStreams:      -1,
		InitialStreamReceiveWindow: 512 << 10,
		MaxStreamReceiveWindow:     uint64(c.StreamWindow),
		// The connection window is shared by all streams: large enough that
		// a few busy streams do not starve each other.
		InitialConnectionReceiveWindow: 1 << 20,
		MaxConnectionReceiveWindow:     uint64(4 * c.StreamWindow),
	}
}

// handshakeError classifies a failure at stage, first turning the TLS
// alert that QUIC carries as a crypto error code back into an alert.
func handshakeError(stage transport.Stage, err error) error {
	if te, ok := errors.AsType[*quic.TransportError](err); ok && te.ErrorCode.IsCryptoError() {
		a := uint8(te.ErrorCode - 0x100)
		if te.Remote {
			err = fmt.Errorf("%w%.0w", err, transport.PeerAlert(a))
		} else if _, ok := errors.AsType[tls.AlertError](err); !ok {
			err = fmt.Errorf("%w%.0w", err, tls.AlertError(a))
		}
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && ae.Remote && ae.ErrorCode == codeBusy {
		err = fmt.Errorf("%w%.0w", err, transport.ErrBusy)
	}
	return transport.NewHandshakeError(Name, stage, err)
}

// Dial connects to addr over QUIC, runs the authenticator on the first
// stream, and returns the session.
func Dial(ctx context.Context, addr string, c *transport.Config) (transport.Session, error) {
	c = c.WithDefaults()
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.HandshakeTimeout)
	defer cancel()
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, transport.NewHandshakeError(Name, transport.StageConnect, fmt.Errorf("resolve %s: %w", addr, err))
	}
	var pc net.PacketConn
	// The local socket's family follows the peer's, so ::1 works.
	pc, err = net.ListenUDP("udp", nil)
	if err != nil {
		return nil, transport.NewHandshakeError(Name, transport.StageConnect, fmt.Errorf("open udp socket: %w", err))
	}
	if c.WrapPacketConn != nil {
		pc = c.WrapPacketConn(pc)
	}
	tr := &quic.Transport{Conn: pc}
	conn, err := tr.Dial(ctx, raddr, c.TLS, quicConfig(c))
	if err != nil {
		_ = tr.Close() // the handshake error is what matters
		_ = pc.Close()
		return nil, handshakeError(transport.StageTLS, fmt.Errorf("quic handshake with %s: %w", addr, err))
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
func authenticateQUIC(ctx context.Context, conn *quic.Conn, c *transport.Config, client bool, start time.Time) (*quicSession, error) {
	var st *quic.Stream
	var err error
	if client {
		st, err = conn.OpenStreamSync(ctx)
	} else {
		st, err = conn.AcceptStream(ctx)
	}
	if err != nil {
		return nil, handshakeError(transport.StageAuthenticate, fmt.Errorf("authentication stream: %w", err))
	}
	deadline, _ := ctx.Deadline()
	_ = st.SetDeadline(deadline) // a failing deadline shows up as a failing read
	cs := conn.ConnectionState().TLS
	peer, err := c.AuthenticatePeer(&cs, st, client)
	if err != nil {
		st.CancelRead(codeReset)
		st.CancelWrite(codeReset)
		return nil, handshakeError(transport.StageAuthenticate, fmt.Errorf("authenticate peer: %w", err))
	}
	_ = st.Close() // the proof is sent; the stream has done its job
	st.CancelRead(codeDone)
	return &quicSession{conn: conn, info: transport.Info{
		Transport: Name,
		TLS:       cs,
		Peer:      peer,
		Local:     conn.LocalAddr(),
		Remote:    conn.RemoteAddr(),
		Handshake: time.Since(start),
	}}, nil
}

type quicSession struct {
	conn *quic.Conn
	info transport.Info
	// release frees the UDP socket behind the session once: a dialler's
	// own socket, or the session's reference to its listener's.
	release   func()
	closeOnce sync.Once
}

func (s *quicSession) OpenStream(ctx context.Context) (transport.Stream, error) {
	st, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("open quic stream: %w", err)
	}
	return &quicStream{st}, nil
}

func (s *quicSession) AcceptStream(ctx context.Context) (transport.Stream, error) {
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
func (s *quicSession) Info() transport.Info  { return s.info }

// Stats reports QUIC's RTT estimate and loss count; see transport.SessionStats.
func (s *quicSession) Stats() transport.Stats {
	cs := s.conn.ConnectionStats()
	return transport.Stats{RTT: cs.SmoothedRTT, PacketsLost: cs.PacketsLost}
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
	*accept.Core
	pc       net.PacketConn
	tr       *quic.Transport
	ln       *quic.Listener
	c        *transport.Config
	closeRef sync.Once
}

// Listen serves tunnel connections on pc, which the listener owns.
func Listen(pc net.PacketConn, c *transport.Config) (transport.Listener, error) {
	c = c.WithDefaults()
	tr := &quic.Transport{Conn: pc}
	ln, err := tr.Listen(c.TLS, quicConfig(c))
	if err != nil {
		_ = tr.Close() // the listen error is what matters
		return nil, fmt.Errorf("listen quic: %w", err)
	}
	l := &quicListener{Core: accept.New(c.MaxHandshakes), pc: pc, tr: tr, ln: ln, c: c, refs: 1}
	l.WG.Add(1)
	go l.routineAccept()
	return l, nil
}

func (l *quicListener) routineAccept() {
	defer l.WG.Done()
	for {
		conn, err := l.ln.Accept(l.Ctx)
		if err != nil {
			if l.Ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) {
				return
			}
			l.c.Logger.Warn("tunnel accept failed", "transport", Name, "err", err)
			continue
		}
		release, ok := l.Acquire(conn.RemoteAddr())
		if !ok {
			l.c.HandshakeFailed(conn.RemoteAddr(), transport.NewHandshakeError(Name, transport.StageAccept, transport.ErrBusy))
			_ = conn.CloseWithError(codeBusy, "busy")
			continue
		}
		l.WG.Add(1)
		go l.routineAuthenticate(conn, release)
	}
}

func (l *quicListener) routineAuthenticate(conn *quic.Conn, release func()) {
	defer l.WG.Done()
	// quic-go reports the handshake done only after it completed, so the
	// time measured here is the authentication step.
	start := time.Now()
	ctx, cancel := context.WithTimeout(l.Ctx, l.c.HandshakeTimeout)
	s, err := authenticateQUIC(ctx, conn, l.c, false, start)
	cancel()
	release()
	if err != nil {
		l.c.HandshakeFailed(conn.RemoteAddr(), err)
		_ = conn.CloseWithError(codeAuth, "authentication failed")
		return
	}
	l.refMu.Lock()
	l.refs++
	l.refMu.Unlock()
	s.release = l.unref
	l.Deliver(s)
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

func (l *quicListener) Transport() string { return Name }
func (l *quicListener) Addr() net.Addr    { return l.ln.Addr() }

func (l *quicListener) Close() error {
	err := l.Shutdown(l.ln.Close)
	l.closeRef.Do(l.unref)
	return err
}

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
	"sync/atomic"
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
	// codeKeepAlive closes a connection whose keep-alive probes went
	// unanswered, so that the peer, if it still hears us, knows why.
	codeKeepAlive quic.ApplicationErrorCode = 3
	codeDone      quic.StreamErrorCode      = 0
	codeReset     quic.StreamErrorCode      = 1
)

// SilenceTimeout is how long a QUIC dial with handshakeTimeout waits for a
// peer that sends nothing at all: quic-go ends a handshake after twice its
// idle timeout, or after the idle timeout without a packet from the peer,
// so half of handshakeTimeout bounds the whole handshake by it.
func SilenceTimeout(handshakeTimeout time.Duration) time.Duration { return handshakeTimeout / 2 }

// c has its defaults applied.
func quicConfig(c *transport.Config) *quic.Config {
	connWindow := min(4*c.StreamWindow, c.MaxConnMemory)
	streamWindow := min(c.StreamWindow, connWindow)
	return &quic.Config{
		HandshakeIdleTimeout:       SilenceTimeout(c.HandshakeTimeout),
		MaxIdleTimeout:             c.IdleTimeout,
		KeepAlivePeriod:            c.KeepAlive,
		MaxIncomingStreams:         int64(c.MaxStreams),
		MaxIncomingUniStreams:      -1,
		InitialStreamReceiveWindow: uint64(min(512<<10, streamWindow)),
		MaxStreamReceiveWindow:     uint64(streamWindow),
		// The connection window is shared by all streams: large enough that
		// a few busy streams do not starve each other, and no larger than
		// the memory a connection may hold.
		InitialConnectionReceiveWindow: uint64(min(1<<20, connWindow)),
		MaxConnectionReceiveWindow:     uint64(connWindow),
		// Datagrams carry the keep-alive probes (probe.go).
		EnableDatagrams: true,
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
	// A listener with every handshake slot taken refuses the first packet.
	if te, ok := errors.AsType[*quic.TransportError](err); ok && te.Remote && te.ErrorCode == quic.ConnectionRefused {
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
	hctx, cancelHandshake := context.WithCancelCause(ctx)
	stopWatch := watchPortUnreachable(hctx, raddr, cancelHandshake)
	conn, err := tr.Dial(hctx, raddr, c.TLS, quicConfig(c))
	stopWatch()
	cause := context.Cause(hctx)
	cancelHandshake(nil)
	if err != nil {
		_ = tr.Close() // the handshake error is what matters
		_ = pc.Close()
		if errors.Is(cause, transport.ErrPortUnreachable) {
			return nil, transport.NewHandshakeError(Name, transport.StageConnect, fmt.Errorf("quic handshake with %s: %w (%w)", addr, cause, err))
		}
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
	redial := func(ctx context.Context) (transport.Session, error) { return Dial(ctx, addr, c) }
	s.growth = transport.NewRTTGrowth(Name, conn.ConnectionStats().SmoothedRTT, redial, sessionRTT, c.Logger)
	s.wg.Add(1)
	go s.routineWatchRTT(c.RTTInterval())
	return s, nil
}

// sessionRTT is quic-go's smoothed RTT of a session of Dial's.
func sessionRTT(s transport.Session) time.Duration {
	st, _ := transport.SessionStats(s)
	return st.RTT
}

// routineWatchRTT hands quic-go's smoothed RTT, and whether the connection
// was busy, to s.growth every interval until the connection ends.
func (s *quicSession) routineWatchRTT(every time.Duration) {
	defer s.wg.Done()
	tick := time.NewTicker(every)
	defer tick.Stop()
	done := s.conn.Context().Done()
	var sent uint64
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		st := s.conn.ConnectionStats()
		s.growth.Check(st.SmoothedRTT, st.MinRTT, st.PacketsSent-sent > busyPackets, done, &s.wg)
		sent = st.PacketsSent
	}
}

// busyPackets is how many packets sent between two RTT checks make a
// connection busy for transport.RTTGrowth: more than keep-alives and
// requests send, less than bulk.
const busyPackets = 128

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
	peer, err := c.AuthenticatePeer(ctx, &cs, st, client)
	if err != nil {
		st.CancelRead(codeReset)
		st.CancelWrite(codeReset)
		return nil, handshakeError(transport.StageAuthenticate, fmt.Errorf("authenticate peer: %w", err))
	}
	_ = st.Close() // the proof is sent; the stream has done its job
	st.CancelRead(codeDone)
	s := &quicSession{conn: conn, maxStreams: c.MaxStreams, info: transport.Info{
		Transport: Name,
		TLS:       cs,
		Peer:      peer,
		Local:     conn.LocalAddr(),
		Remote:    conn.RemoteAddr(),
		Handshake: time.Since(start),
	}}
	startProbing(s, c)
	return s, nil
}

type quicSession struct {
	conn *quic.Conn
	info transport.Info
	// maxStreams is the MaxIncomingStreams this side grants.
	maxStreams int
	// release frees the UDP socket behind the session once: a dialler's
	// own socket, or the session's reference to its listener's.
	release   func()
	closeOnce sync.Once
	wg        sync.WaitGroup // the keep-alive probes, the RTT watch and a successor's dial
	// prober runs the keep-alive probes; nil when they are off or the
	// peer takes no datagrams.
	prober *prober
	// growth replaces a session this side dialled once its path's RTT
	// grew; nil on a listen side.
	growth *transport.RTTGrowth
}

// Superseded offers, at most once, a new connection to the same address
// once the path's RTT grew well past the one this connection came up
// over; see transport.RTTGrowth.
func (s *quicSession) Superseded() <-chan transport.Succession {
	if s.growth == nil {
		return nil
	}
	return s.growth.Superseded()
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
		// The error that ends a connection may come before its context is
		// done; the error's type says so too.
		if r := closeReason(err); r != transport.CloseUnknown || s.conn.Context().Err() != nil {
			return nil, fmt.Errorf("accept quic stream: %w: %w", net.ErrClosed, &transport.ClosedError{Reason: r, Err: err})
		}
		return nil, fmt.Errorf("accept quic stream: %w", err)
	}
	return &quicStream{st}, nil
}

func (s *quicSession) Close() error {
	err := s.conn.CloseWithError(codeNormal, "closed")
	s.wg.Wait() // the probes, the RTT watch and a successor's dial end with the connection
	if s.growth != nil {
		s.growth.Drop()
	}
	s.closeOnce.Do(func() {
		if s.release != nil {
			s.release()
		}
	})
	return err
}
func (s *quicSession) Done() <-chan struct{} { return s.conn.Context().Done() }
func (s *quicSession) Info() transport.Info  { return s.info }

// StreamBound is the MaxIncomingStreams this side grants; see transport.SessionStreamBound.
func (s *quicSession) StreamBound() transport.StreamBound {
	return transport.StreamBound{Streams: s.maxStreams}
}

// Stats reports QUIC's RTT estimate and packet counts, the peer's as its
// last keep-alive probe carried them; see transport.SessionStats.
func (s *quicSession) Stats() transport.Stats {
	cs := s.conn.ConnectionStats()
	st := transport.Stats{RTT: cs.SmoothedRTT, PacketsSent: cs.PacketsSent, PacketsLost: cs.PacketsLost}
	if s.prober != nil {
		st.PeerPacketsSent, st.PeerPacketsLost = s.prober.peerSent.Load(), s.prober.peerLost.Load()
	}
	return st
}

// ProbeLoss sends n keep-alive pings, one every interval, and reports how
// many the peer answered, for transport.ProbeLoss.
func (s *quicSession) ProbeLoss(ctx context.Context, n int, every time.Duration) (sent, answered int, err error) {
	if s.prober == nil {
		return 0, 0, transport.ErrNoLossProbe
	}
	return s.prober.probeLoss(ctx, n, every)
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

// quicListener serves QUIC on one UDP socket. Each new connection takes a
// handshake slot with its first Initial packet and holds it until
// authentication ends or the connection dies; while any handshake is in
// progress, a new connection must first prove its address with a Retry. Closing it stops
// accepting; the socket stays open for the sessions it returned until the
// last of them is closed, so they can drain.
type quicListener struct {
	refMu sync.Mutex
	refs  int // the listener itself plus each session handed out
	*accept.Core
	pc       net.PacketConn
	tr       *quic.Transport
	ln       *quic.Listener
	c        *transport.Config
	closeRef sync.Once
	refused  recentRefusals
}

// recentRefusals remembers the source addresses (IP and port) of the
// last refused connections for HandshakeTimeout. quic-go asks about every
// Initial packet of a connection it refused: a post-quantum ClientHello
// spans two, and a client whose refusal was lost sends its Initial again.
// One attempt is reported once; attempts that one socket starts within
// HandshakeTimeout of each other count as one.
type recentRefusals struct {
	window time.Duration
	mu     sync.Mutex
	ring   [4096]refusal
	next   int
	at     map[string]time.Time // the latest refusal of each address in ring
}

type refusal struct {
	key string
	at  time.Time
}

// first records remote and reports whether it was not refused within the window.
func (r *recentRefusals) first(remote net.Addr) bool {
	key := remote.String()
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, seen := r.at[key]; seen && now.Sub(t) < r.window {
		return false
	}
	if r.at == nil {
		r.at = map[string]time.Time{}
	}
	if old := r.ring[r.next]; r.at[old.key] == old.at {
		delete(r.at, old.key)
	}
	r.ring[r.next] = refusal{key, now}
	r.at[key] = now
	r.next = (r.next + 1) % len(r.ring)
	return true
}

// Listen serves tunnel connections on pc, which the listener owns.
func Listen(pc net.PacketConn, c *transport.Config) (transport.Listener, error) {
	c = c.WithDefaults()
	l := &quicListener{Core: accept.New(c.MaxHandshakes), pc: pc, c: c, refs: 1, refused: recentRefusals{window: c.HandshakeTimeout}}
	l.tr = &quic.Transport{Conn: pc, ConnContext: l.connContext, VerifySourceAddress: l.mustRetry}
	if c.StatelessResetKey != nil {
		l.tr.StatelessResetKey = (*quic.StatelessResetKey)(c.StatelessResetKey)
	}
	ln, err := l.tr.Listen(c.TLS, quicConfig(c))
	if err != nil {
		_ = l.tr.Close() // the listen error is what matters
		return nil, fmt.Errorf("listen quic: %w", err)
	}
	l.ln = ln
	l.WG.Add(1)
	go l.routineAccept()
	return l, nil
}

// mustRetry makes a new connection prove its source address with a Retry
// while any handshake is in progress. A source that cannot answer (a
// spoofed address) then holds no slot and costs no first flight: with the
// threshold at half the slots, 176 of 300 such sources in a flood held one
// until the timeout, each after a full first flight. An idle listener
// answers at once; a client pays one round trip more only when handshakes
// overlap.
func (l *quicListener) mustRetry(net.Addr) bool { return l.InUse() > 0 }

// slotKey is the context key of a connection's *handshakeSlot.
type slotKey struct{}

// handshakeSlot is a connection's hold on a handshake slot, from its first
// Initial packet until authentication ends or the connection dies.
type handshakeSlot struct {
	start time.Time
	free  func() // gives the slot back; later calls do nothing
	// state moves from handshaking to accepted (Accept returned the
	// connection) or to dead (it died before): whoever moves it reports.
	state atomic.Int32
}

const (
	slotHandshaking = iota
	slotAccepted
	slotDead
)

// connContext runs for each new connection before quic-go answers its
// first packet: it takes a handshake slot or refuses the connection, and
// reports a handshake that dies before quic-go completes it.
func (l *quicListener) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	release, ok := l.Acquire(info.RemoteAddr)
	if !ok {
		if l.refused.first(info.RemoteAddr) {
			l.c.HandshakeFailed(info.RemoteAddr, transport.NewHandshakeError(Name, transport.StageAccept, transport.ErrBusy))
		}
		return nil, transport.ErrBusy
	}
	h := &handshakeSlot{start: time.Now(), free: release}
	context.AfterFunc(ctx, func() {
		h.free()
		// Handshakes the listener's Close ends are not failures.
		if h.state.CompareAndSwap(slotHandshaking, slotDead) && l.Ctx.Err() == nil {
			l.c.HandshakeFailed(info.RemoteAddr, handshakeError(transport.StageTLS,
				fmt.Errorf("quic handshake with %s: %w", info.RemoteAddr, context.Cause(ctx))))
		}
	})
	return context.WithValue(ctx, slotKey{}, h), nil
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
		h, ok := conn.Context().Value(slotKey{}).(*handshakeSlot)
		if !ok || !h.state.CompareAndSwap(slotHandshaking, slotAccepted) {
			// Every connection went through connContext; one that died
			// meanwhile has been reported there.
			_ = conn.CloseWithError(codeAuth, "authentication failed")
			continue
		}
		l.WG.Add(1)
		go l.routineAuthenticate(conn, h)
	}
}

func (l *quicListener) routineAuthenticate(conn *quic.Conn, h *handshakeSlot) {
	defer l.WG.Done()
	// The handshake timeout counts from the first packet, so the QUIC
	// handshake and authentication together are bounded by it.
	ctx, cancel := context.WithDeadline(l.Ctx, h.start.Add(l.c.HandshakeTimeout))
	s, err := authenticateQUIC(ctx, conn, l.c, false, h.start)
	cancel()
	h.free()
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

// closeReason says why a connection ended, from the error quic-go ended it with.
func closeReason(err error) transport.CloseReason {
	if _, ok := errors.AsType[*quic.StatelessResetError](err); ok {
		return transport.CloseStatelessReset
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return transport.CloseIdleTimeout
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok {
		switch {
		case ae.ErrorCode == codeKeepAlive:
			return transport.CloseKeepAliveLost
		case ae.Remote:
			return transport.ClosePeer
		default:
			return transport.CloseLocal
		}
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok {
		if te.ErrorCode.IsCryptoError() {
			return transport.CloseTLS
		}
		if te.Remote && te.ErrorCode == quic.NoError {
			return transport.ClosePeer
		}
		return transport.CloseTransportError
	}
	return transport.CloseUnknown
}

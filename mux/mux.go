// Package mux carries many byte streams over one authenticated tunnel
// connection. A Session opens and accepts Streams; two transports implement
// it: QUIC (quic-go) and TLS 1.3 over TCP multiplexed by yamux. The package
// knows TLS configurations and an authentication hook, never routes.
package mux

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Stream is one full-duplex byte stream with half-close.
type Stream interface {
	io.Reader
	io.Writer
	// CloseWrite ends the write direction: the peer reads EOF after the data
	// already written. Reading goes on.
	CloseWrite() error
	// Close ends the stream gracefully once the caller is done with both
	// directions; data still arriving is discarded.
	Close() error
	// Reset aborts both directions at once; blocked readers and writers on
	// both sides return errors.
	Reset()
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// Session is one authenticated tunnel connection.
type Session interface {
	// OpenStream opens a stream to the peer. Over QUIC it blocks while the
	// peer's stream limit is reached, until ctx ends; over TCP the peer
	// resets streams past its limit instead.
	OpenStream(ctx context.Context) (Stream, error)
	// AcceptStream returns the next stream the peer opened.
	AcceptStream(ctx context.Context) (Stream, error)
	// Close tears the connection down; every stream on it fails.
	Close() error
	// Done is closed once the connection is gone, for whatever reason.
	Done() <-chan struct{}
	// Info describes the connection; it does not change.
	Info() Info
}

// Info is what was negotiated for a session.
type Info struct {
	Transport string // "quic" or "tcp"
	TLS       tls.ConnectionState
	Peer      Peer
	Local     net.Addr
	Remote    net.Addr
	// Handshake is the time from the first packet to a verified peer proof.
	Handshake time.Duration
}

// Peer is the authenticated peer, as the Authenticator reported it.
type Peer struct {
	Name   string
	PQAuth bool
}

// Stats are transport measurements of a live session.
type Stats struct {
	RTT         time.Duration
	PacketsLost uint64
}

// SessionStats returns the session's transport measurements, where the
// transport has them (QUIC).
func SessionStats(s Session) (Stats, bool) {
	if r, ok := s.(interface{ stats() Stats }); ok {
		return r.stats(), true
	}
	return Stats{}, false
}

// Authenticator runs after the TLS handshake and before any stream: it may
// exchange messages over rw and must return an error to refuse the peer.
type Authenticator func(cs *tls.ConnectionState, rw io.ReadWriter, client bool) (Peer, error)

// Listener accepts authenticated sessions.
type Listener interface {
	// Accept returns the next session whose handshake and authentication
	// succeeded; it returns ErrClosed after Close.
	Accept(ctx context.Context) (Session, error)
	// Close stops accepting, closes sessions not yet returned by Accept,
	// and waits for in-flight handshakes to stop. Sessions already returned
	// stay up, so that they can drain.
	Close() error
	Addr() net.Addr
	// Transport is TransportQUIC or TransportTCP.
	Transport() string
}

// ErrBusy is passed to OnHandshakeError for a connection refused because
// MaxHandshakes handshakes are already in progress.
var ErrBusy = errors.New("mux: too many handshakes in progress")

// ErrClosed is returned by Accept after Close.
var ErrClosed = errors.New("mux: listener closed")

// Config is the transport policy shared by both transports.
type Config struct {
	// TLS is the TLS configuration; for a listener it serves every handshake.
	TLS *tls.Config
	// Authenticate runs after the handshake; nil accepts every peer.
	Authenticate Authenticator
	// HandshakeTimeout bounds the TLS handshake plus Authenticate. Zero means 10s.
	HandshakeTimeout time.Duration
	// KeepAlive is the interval of keep-alive probes. Zero means 5s.
	KeepAlive time.Duration
	// IdleTimeout closes a connection whose peer has been silent this long.
	// Zero means 3 keep-alive intervals, so a dead peer is noticed within seconds.
	IdleTimeout time.Duration
	// MaxStreams bounds the streams a peer may have open at once on one
	// session. Zero means 4096.
	MaxStreams int
	// MaxHandshakes bounds handshakes in progress on a listener. Zero means 64.
	MaxHandshakes int
	// StreamWindow is the per-stream receive window in bytes. Zero means 4 MiB.
	StreamWindow int
	// WrapConn, if set, wraps each dialled TCP connection (to measure it).
	WrapConn func(net.Conn) net.Conn
	// WrapPacketConn, if set, wraps each dialled QUIC connection's UDP socket.
	WrapPacketConn func(net.PacketConn) net.PacketConn
	// OnHandshakeError is told of each failed incoming handshake; may be nil.
	OnHandshakeError func(remote net.Addr, err error)
	// Logger receives transport-level debug events; nil discards them.
	Logger *slog.Logger
}

func (c *Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout > 0 {
		return c.HandshakeTimeout
	}
	return 10 * time.Second
}

func (c *Config) keepAlive() time.Duration {
	if c.KeepAlive > 0 {
		return c.KeepAlive
	}
	return 5 * time.Second
}

func (c *Config) idleTimeout() time.Duration {
	if c.IdleTimeout > 0 {
		return c.IdleTimeout
	}
	return 3 * c.keepAlive()
}

func (c *Config) maxStreams() int {
	if c.MaxStreams > 0 {
		return c.MaxStreams
	}
	return 4096
}

func (c *Config) maxHandshakes() int {
	if c.MaxHandshakes > 0 {
		return c.MaxHandshakes
	}
	return 64
}

func (c *Config) streamWindow() int {
	if c.StreamWindow > 0 {
		return c.StreamWindow
	}
	return 4 << 20
}

func (c *Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (c *Config) handshakeFailed(remote net.Addr, err error) {
	if c.OnHandshakeError != nil {
		c.OnHandshakeError(remote, err)
	}
}

func (c *Config) authenticate(cs *tls.ConnectionState, rw io.ReadWriter, client bool) (Peer, error) {
	if c.Authenticate == nil {
		return Peer{}, nil
	}
	return c.Authenticate(cs, rw, client)
}

// acceptQueue hands sessions that finished their handshake to Accept.
type acceptQueue struct {
	ch     chan Session
	closed chan struct{}
}

func newAcceptQueue() *acceptQueue {
	return &acceptQueue{ch: make(chan Session), closed: make(chan struct{})}
}

// deliver passes s to Accept, or closes it if the listener closes first.
func (q *acceptQueue) deliver(s Session) {
	select {
	case q.ch <- s:
	case <-q.closed:
		_ = s.Close() // nobody will use it
	}
}

func (q *acceptQueue) accept(ctx context.Context) (Session, error) {
	select {
	case s := <-q.ch:
		return s, nil
	case <-q.closed:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// listenerCore is what both listeners share: the queue Accept reads, the
// bound on handshakes in progress, and a Close that stops them all.
type listenerCore struct {
	q      *acceptQueue
	sem    chan struct{}
	ctx    context.Context // ends when the listener closes
	cancel context.CancelFunc
	once   sync.Once
	wg     sync.WaitGroup // accept loop and handshakes
}

func newListenerCore(c *Config) *listenerCore {
	l := &listenerCore{q: newAcceptQueue(), sem: make(chan struct{}, c.maxHandshakes())}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

func (l *listenerCore) Accept(ctx context.Context) (Session, error) { return l.q.accept(ctx) }

// shutdown stops accepting, closes the socket once with closeSocket, and
// waits for the accept loop and handshakes to end.
func (l *listenerCore) shutdown(closeSocket func() error) error {
	var err error
	l.once.Do(func() {
		close(l.q.closed)
		l.cancel()
		err = closeSocket()
	})
	l.wg.Wait()
	return err
}

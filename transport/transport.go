// Package transport carries many byte streams over one authenticated tunnel
// connection. A Transport dials and listens; a Session opens and accepts
// Streams. Implementations live in subpackages (quic, tlsmux, memtransport)
// and are found by name through Register and Lookup; Fallback combines two
// into one. The package knows TLS configurations and an authentication
// hook, never routes, and imports none of its implementations.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/defaults"
)

// Transport is one way of carrying tunnel connections. Dial and Listen may
// be called concurrently and any number of times.
type Transport interface {
	// Name is the transport's PQT_TRANSPORT value and its "transport" label
	// in logs and metrics.
	Name() string
	// Dial connects to addr, runs the TLS handshake and c.Authenticate, and
	// returns the session. Failures of the handshake or of authentication
	// are *HandshakeError. The handshake is bounded by c.HandshakeTimeout and ctx.
	Dial(ctx context.Context, addr string, c *Config) (Session, error)
	// Listen binds addr and serves tunnel connections until the Listener is
	// closed. An address with port 0 binds a free port, which Addr reports.
	Listen(addr string, c *Config) (Listener, error)
}

// UsesUDP reports whether t sends its traffic over UDP, where the socket
// buffer sizes of the host matter; a transport says so by implementing
// interface{ UsesUDP() bool }.
func UsesUDP(t Transport) bool {
	u, ok := t.(interface{ UsesUDP() bool })
	return ok && u.UsesUDP()
}

// The registry maps PQT_TRANSPORT names to transports, as database/sql does
// drivers: a program registers the transports it links in, once, at start.
var registry = struct {
	mu sync.RWMutex
	m  map[string]Transport
}{m: map[string]Transport{}}

// Register makes t available to Lookup under t.Name(). It panics if the name
// is empty or taken, which is a programming error.
func Register(t Transport) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	name := t.Name()
	if name == "" {
		panic("transport: Register of a transport without a name")
	}
	if _, dup := registry.m[name]; dup {
		panic("transport: Register called twice for " + name)
	}
	registry.m[name] = t
}

// ErrUnknown is wrapped by Lookup for a name nobody registered.
var ErrUnknown = errors.New("unknown transport")

// Lookup returns the transport registered under name.
func Lookup(name string) (Transport, error) {
	registry.mu.RLock()
	defer registry.mu.RUnlock()
	if t, ok := registry.m[name]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknown, name, strings.Join(namesLocked(), ", "))
}

// Names lists the registered transports, sorted.
func Names() []string {
	registry.mu.RLock()
	defer registry.mu.RUnlock()
	return namesLocked()
}

func namesLocked() []string {
	names := make([]string, 0, len(registry.m))
	for n := range registry.m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

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
	Transport string // the Name of the transport that carries it
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
	// Sig names the peer's CertificateVerify signature scheme (ML-DSA-65).
	Sig string
	// ClassicalReason says why PQAuth is false, when it is.
	ClassicalReason string
}

// Stats are transport measurements of a live session.
type Stats struct {
	RTT time.Duration
	// PacketsSent and PacketsLost count this side's packets since the
	// session began; lost ones are included in sent.
	PacketsSent, PacketsLost uint64
	// PeerPacketsSent and PeerPacketsLost are the peer's counts as it last
	// reported them, zero when it did not: the loss of the other direction.
	PeerPacketsSent, PeerPacketsLost uint64
}

// SessionStats returns the session's transport measurements, where the
// transport has them (QUIC): a session offers them with a Stats() Stats
// method. A session that wraps another says so with Unwrap() Session.
func SessionStats(s Session) (Stats, bool) {
	for s != nil {
		if r, ok := s.(interface{ Stats() Stats }); ok {
			return r.Stats(), true
		}
		u, ok := s.(interface{ Unwrap() Session })
		if !ok {
			break
		}
		s = u.Unwrap()
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
	// Transport is the Name of the transport that serves it.
	Transport() string
}

// DefaultTCPCongestion is the congestion control the tunnel's TCP sockets
// use when Config.TCPCongestion is empty and the kernel offers it: over a
// path with random loss BBR keeps its rate where loss-based CUBIC
// collapses (direct TCP at 40 ms and 1 % loss: 10.5 MB/s with BBR, 0.4
// with CUBIC).
const DefaultTCPCongestion = "bbr"

// ErrBusy is passed to OnHandshakeError for a connection refused because
// MaxHandshakes handshakes are already in progress.
var ErrBusy = errors.New("transport: too many handshakes in progress")

// ErrConnMemory is wrapped by OpenStream when the session's receive windows
// already take Config.MaxConnMemory, so another stream would exceed it.
var ErrConnMemory = errors.New("transport: tunnel connection memory bound reached")

// ErrStreamRefused is wrapped by the first Read of a stream this side
// opened when the peer's multiplexer refused the stream before its
// application saw it: the peer already carries as many streams of this
// side as it accepts on the connection (its MaxStreams, or its
// MaxConnMemory over tcp, may be lower than this side's), its accept
// queue is full, or it is going away. Nothing of the stream reached the
// peer's application, so the stream can be counted as refused, not as
// failed.
var ErrStreamRefused = errors.New("transport: the peer refused the stream: it carries its stream bound on this connection, or it is going away")

// ErrClosed is returned by Accept after Close.
var ErrClosed = errors.New("transport: listener closed")

// Config is the transport policy shared by all transports. It must not
// change once passed to Dial or Listen.
type Config struct {
	// TLS is the TLS configuration; for a listener it serves every handshake.
	TLS *tls.Config
	// Authenticate runs after the handshake; nil accepts every peer.
	Authenticate Authenticator
	// HandshakeTimeout bounds the TLS handshake plus Authenticate. Zero
	// means defaults.HandshakeTimeout (10s).
	HandshakeTimeout time.Duration
	// KeepAlive is the interval of keep-alive probes. Zero means
	// defaults.KeepAlive (2s).
	KeepAlive time.Duration
	// IdleTimeout closes a connection whose peer has been silent this long.
	// Zero means defaults.IdleTimeout (8s), or four KeepAlive intervals when
	// that is longer, so that a dead peer is noticed within seconds.
	IdleTimeout time.Duration
	// KeepAliveTimeout closes a connection whose keep-alive probes have
	// gone unanswered this long, even while packets from the peer still
	// arrive (a path dead one way): probes go out every ProbeInterval, and
	// on TCP the kernel gives up on data unacknowledged for about this
	// long. A slow or busy path is not mistaken for a dead one, since any
	// acknowledgement (TCP) or answered probe (QUIC) counts. Zero means
	// defaults.KeepAliveTimeout (3s); negative turns the probes off, which
	// leaves IdleTimeout alone to notice a dead peer.
	KeepAliveTimeout time.Duration
	// TCPCongestion names the congestion control of the tunnel's TCP
	// sockets (Linux: TCP_CONGESTION), such as "bbr", which keeps a lossy
	// long path fast where loss-based CUBIC collapses. Empty means
	// DefaultTCPCongestion where the kernel lets this process set it, and
	// the kernel's default otherwise.
	TCPCongestion string
	// StatelessResetKey, if set, lets a QUIC listener answer packets of
	// connections it does not know with a stateless reset, so that after a
	// restart with the same key the peers of the old process learn at once
	// that their connections are gone. It should be derived from the
	// listener's long-term secret and be the same across restarts.
	StatelessResetKey *[32]byte
	// MaxStreams bounds the streams a peer may have open at once on one
	// session. Zero means defaults.MaxStreams (4096).
	MaxStreams int
	// MaxHandshakes bounds handshakes in progress on a listener. Zero means
	// defaults.MaxHandshakes (64).
	MaxHandshakes int
	// StreamWindow is the most a stream's receive window grows to, in
	// bytes. Zero means defaults.StreamWindow (16 MiB).
	StreamWindow int
	// MaxConnMemory bounds the bytes one session may have granted its peer
	// in receive windows (QUIC's connection window; the sum of yamux's
	// stream windows), so a peer that pushes faster than the origin reads
	// is slowed by flow control rather than buffered. Over TCP the peer
	// may then have at most MaxConnMemory/512 KiB streams open (yamux's
	// smallest window is 256 KiB, and half the bound is kept for them).
	// Zero means defaults.MaxConnMemory (256 MiB); less than 1 MiB means 1 MiB.
	MaxConnMemory int
	// WrapConn, if set, wraps each dialled TCP connection (to measure it).
	WrapConn func(net.Conn) net.Conn
	// WrapPacketConn, if set, wraps each dialled QUIC connection's UDP socket.
	WrapPacketConn func(net.PacketConn) net.PacketConn
	// OnHandshakeError is told of each failed incoming handshake, a
	// *HandshakeError; may be nil.
	OnHandshakeError func(remote net.Addr, err error)
	// FallbackTimeout bounds the primary transport's attempt before a
	// Fallback dial tries the secondary. Zero means defaults.FallbackTimeout (3s).
	FallbackTimeout time.Duration
	// RetryPrimary is how often a Fallback session carried by the secondary
	// transport tries the primary again. Zero means defaults.QUICRetry (30s).
	RetryPrimary time.Duration
	// FallbackLoss is the percent of packets lost at random at which a
	// Fallback session on the primary transport moves to the secondary (see
	// the loss watch), and under which a trial of the primary must lose
	// its probes for the session to move back. Zero means
	// defaults.FallbackLoss (0.05); negative turns the loss watch off.
	FallbackLoss float64
	// Logger receives transport-level debug events; nil discards them.
	Logger *slog.Logger
}

func (c *Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout > 0 {
		return c.HandshakeTimeout
	}
	return defaults.HandshakeTimeout
}

func (c *Config) keepAlive() time.Duration {
	if c.KeepAlive > 0 {
		return c.KeepAlive
	}
	return defaults.KeepAlive
}

func (c *Config) idleTimeout() time.Duration {
	if c.IdleTimeout > 0 {
		return c.IdleTimeout
	}
	return max(defaults.IdleTimeout, 4*c.keepAlive())
}

func (c *Config) keepAliveTimeout() time.Duration {
	if c.KeepAliveTimeout != 0 {
		return c.KeepAliveTimeout
	}
	return defaults.KeepAliveTimeout
}

// ProbeInterval is how often a connection whose KeepAliveTimeout is on
// sends a keep-alive probe: KeepAlive, or a quarter of KeepAliveTimeout
// when that is shorter, so that several probes fit into the timeout and
// one lost probe does not end a connection. Zero when the probes are off.
func (c *Config) ProbeInterval() time.Duration {
	t := c.keepAliveTimeout()
	if t <= 0 {
		return 0
	}
	return min(c.keepAlive(), t/4)
}

// RTTInterval is how often a session re-measures or checks its path's
// RTT: every keep-alive probe, or every keep-alive interval with the
// probes off.
func (c *Config) RTTInterval() time.Duration {
	if p := c.ProbeInterval(); p > 0 {
		return p
	}
	return c.keepAlive()
}

func (c *Config) maxStreams() int {
	if c.MaxStreams > 0 {
		return c.MaxStreams
	}
	return defaults.MaxStreams
}

func (c *Config) maxHandshakes() int {
	if c.MaxHandshakes > 0 {
		return c.MaxHandshakes
	}
	return defaults.MaxHandshakes
}

func (c *Config) streamWindow() int {
	if c.StreamWindow > 0 {
		return c.StreamWindow
	}
	return defaults.StreamWindow
}

func (c *Config) maxConnMemory() int {
	if c.MaxConnMemory > 0 {
		return max(c.MaxConnMemory, 1<<20)
	}
	return defaults.MaxConnMemory
}

func (c *Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (c *Config) fallbackTimeout() time.Duration {
	if c.FallbackTimeout > 0 {
		return c.FallbackTimeout
	}
	return defaults.FallbackTimeout
}

func (c *Config) fallbackLoss() float64 {
	if c.FallbackLoss != 0 {
		return c.FallbackLoss
	}
	return defaults.FallbackLoss
}

func (c *Config) retryPrimary() time.Duration {
	if c.RetryPrimary > 0 {
		return c.RetryPrimary
	}
	return defaults.QUICRetry
}

// WithDefaults returns a copy of c with every zero field that has a
// default set to it, so that implementations read fields, not rules.
func (c *Config) WithDefaults() *Config {
	d := *c
	d.HandshakeTimeout = c.handshakeTimeout()
	d.KeepAlive = c.keepAlive()
	d.IdleTimeout = c.idleTimeout()
	d.KeepAliveTimeout = c.keepAliveTimeout()
	d.MaxStreams = c.maxStreams()
	d.MaxHandshakes = c.maxHandshakes()
	d.StreamWindow = c.streamWindow()
	d.MaxConnMemory = c.maxConnMemory()
	d.FallbackTimeout = c.fallbackTimeout()
	d.RetryPrimary = c.retryPrimary()
	d.FallbackLoss = c.fallbackLoss()
	d.Logger = c.logger()
	return &d
}

// HandshakeFailed tells OnHandshakeError, if set, of a failed incoming handshake.
func (c *Config) HandshakeFailed(remote net.Addr, err error) {
	if c.OnHandshakeError != nil {
		c.OnHandshakeError(remote, err)
	}
}

// AuthenticatePeer runs Authenticate, or accepts the peer when it is nil.
// It ends when ctx does, whatever its deadline: rw's deadline is then moved
// to now (rw has one on every transport: a TLS connection, a QUIC stream),
// so that a read waiting for a peer that stopped answering returns, and
// the error is ctx's cause. A dial given up halfway is not left running
// until HandshakeTimeout.
func (c *Config) AuthenticatePeer(ctx context.Context, cs *tls.ConnectionState, rw io.ReadWriter, client bool) (Peer, error) {
	if c.Authenticate == nil {
		return Peer{}, nil
	}
	dl, ok := rw.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return c.Authenticate(cs, rw, client)
	}
	stop := context.AfterFunc(ctx, func() { _ = dl.SetDeadline(time.Now()) })
	peer, err := c.Authenticate(cs, rw, client)
	if !stop() {
		// The deadline was moved, or is being: rw is not to be used again.
		return Peer{}, context.Cause(ctx)
	}
	return peer, err
}

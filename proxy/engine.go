// Package proxy is pqtunnel's engine: it accepts plain TCP on forward routes,
// carries each connection as a stream through a tunnel session, and delivers
// streams that arrive from the tunnel to target routes. Which side opens the
// tunnel connection (listen or dial) is independent of which way streams go,
// so forward and reverse tunnels are the same code.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/check"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/defaults"
	"github.com/pqtunnel/pqtunnel/route"
	"github.com/pqtunnel/pqtunnel/tlsroute"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// nextTunnelID numbers tunnel connections across every engine in the
// process, so that engines sharing one Metrics report distinct series.
var nextTunnelID atomic.Uint64

// Mode says who opens the tunnel connection.
type Mode string

const (
	ModeListen Mode = "listen"
	ModeDial   Mode = "dial"
	// ModeLocal runs no tunnel: every route joins a route of the same name
	// on this side (see LocalJoins), as a TLS wrapper in stunnel's style.
	ModeLocal Mode = "local"
)

// Config is the engine's whole policy. It must not change once New returns.
type Config struct {
	// Mode is ModeListen, ModeDial or ModeLocal; it has no default.
	Mode Mode
	// Tunnel is the address to listen on (listen) or the peers to dial (dial).
	Tunnel []string
	// Transport carries the tunnel connections: one of the transport
	// package's implementations, or a transport.Fallback of two. It is
	// required: the transports are registered by the program, not here.
	Transport transport.Transport
	// Connections is how many tunnel connections a dial side keeps, spread
	// over every address the Tunnel entries resolve to and at least one per
	// address. Zero means defaults.Connections (2).
	Connections int
	// MaxConnections bounds the tunnel connections a listen side serves at
	// once, and those a dial side holds when it opens more than Connections
	// because every one nears its stream bound. Zero means
	// defaults.MaxConnections (256); negative means no bound.
	MaxConnections int
	// ResolveInterval is how often a dial side looks up the host names in
	// Tunnel again, adding tunnel connections for new addresses and
	// draining those of vanished ones. Zero means defaults.ResolveInterval (30s).
	ResolveInterval time.Duration
	// LookupHost resolves a Tunnel host name; nil means the system's
	// resolver (net.DefaultResolver), which reads /etc/hosts and DNS.
	LookupHost func(ctx context.Context, host string) ([]netip.Addr, error)
	// SurplusIdle is how long a tunnel connection a dial side opened beyond
	// Connections may carry nothing before it is closed. Zero means
	// defaults.SurplusIdle (30s).
	SurplusIdle time.Duration
	// Forward are the routes on which this side accepts plain TCP to carry
	// through the tunnel; none when empty.
	Forward []Route
	// Target are the routes to which this side delivers streams from the
	// tunnel, the only addresses it dials; none when empty.
	Target []Route
	// TLS holds the identity, pins and key-exchange policy of tunnels; it
	// is required except in ModeLocal.
	TLS *hybridtls.Store
	// TLSRoutes holds the certificates, roots and key-exchange policy of
	// tls:// routes; it is required when a route is one.
	TLSRoutes *tlsroute.Store
	// Mux holds transport timeouts and limits; TLS, Authenticate, Logger,
	// FallbackTimeout, RetryPrimary and FallbackLoss are set by the engine.
	Mux transport.Config
	// DialTimeout bounds dialling an origin. Zero means defaults.DialTimeout (5s).
	DialTimeout time.Duration
	// DrainTimeout bounds how long the streams of a tunnel connection being
	// replaced (a Fallback session whose primary transport works again) may
	// finish before it closes, and is the drain timeout the status reports.
	// Shutdown's drain is bounded by its context instead, to which a program
	// gives the same value. Zero means defaults.DrainTimeout (30s).
	DrainTimeout time.Duration
	// FallbackTimeout bounds the primary transport's attempt before a
	// transport.Fallback dial side tries the secondary (QUIC, then TCP, for
	// auto). Zero means defaults.FallbackTimeout (3s), applied by the transport.
	FallbackTimeout time.Duration
	// QUICRetry is how often a Fallback dial side that fell back tries the
	// primary transport again. Zero means defaults.QUICRetry (30s), applied
	// by the transport.
	QUICRetry time.Duration
	// FallbackLoss is the percent of packets lost at random at which a
	// transport.Fallback dial side on the primary transport moves to the
	// secondary. Zero means defaults.FallbackLoss (0.05), applied by the
	// transport; negative turns the move off.
	FallbackLoss float64
	// Logger receives the engine's events; nil discards them.
	Logger *slog.Logger
	// SettingName, if set, names a Config field (by its Go name, such as
	// "MaxTotalStreams"; a field of Mux by its own name, "MaxConnMemory")
	// in runtime messages, logs and refusals sent to the peer, in the
	// caller's terms (pqtunnel gives its variable names), so that they say
	// what to change; nil uses the field name.
	SettingName func(field string) string
	// MaxTotalStreams bounds the streams this process carries at once, in
	// both directions; past it clients are refused and the peer's new streams
	// get StatusBusy. Zero means defaults.MaxTotalStreams (65,536); negative
	// means no bound.
	MaxTotalStreams int
	// UnixSocketMode is the mode of the sockets unix:// forward routes
	// create. Zero means defaults.UnixSocketMode (0660).
	UnixSocketMode fs.FileMode
	// UnixSocketGroup, a group name or number, is given to those sockets;
	// empty keeps the process's group.
	UnixSocketGroup string
	// MaxClientsPerIP bounds the clients one source (an IPv4 address, or an
	// IPv6 /64) may have open at once on the forward routes, so that one
	// visitor cannot hold every stream slot. Zero means a quarter of
	// MaxTotalStreams (defaults.ClientsPerIPShare; 16,384 by default);
	// negative means no bound. Clients of a sidecar all come from loopback
	// and share one count.
	MaxClientsPerIP int
	// PeerShare is the percentage of MaxConnections and of MaxTotalStreams
	// one peer may hold when the TLS material accepts more than one peer:
	// the tunnel connections it opens to a listen side and the streams it
	// opens, so that one peer cannot lock the others out. With a single
	// peer accepted it may hold everything. Zero means defaults.PeerShare
	// (50); values are clipped to 1..100.
	PeerShare int
	// StreamIdleTimeout closes a stream on which no byte moved in either
	// direction for this long, freeing its slots. Zero means never: database
	// pools legitimately idle for hours.
	StreamIdleTimeout time.Duration
	// ProxyProtocol, 1 or 2, makes this side send a PROXY protocol header of
	// that version to each origin it dials; zero sends none.
	ProxyProtocol byte
	// HandshakeLog limits the lines about failed tunnel handshakes; give
	// the TLS policy's Logger the same one. Nil means one of the engine's
	// own over Logger.
	HandshakeLog *HandshakeLog
	// Metrics receives the engine's measurements and serves them on
	// Handler's /metrics; nil means a private set.
	Metrics *Metrics
	// Observer, when set, is told of every event Metrics is.
	Observer Observer
	// Kinds are route kinds this engine delivers besides the built-in
	// ones (TCP); each needs a wire value of its own. A route names its
	// kind in Route.Kind.
	Kinds []route.Kind
	// KeyLog names the file the TLS stack writes session secrets to
	// (PQT_KEYLOG), so that every tunnel can warn that its traffic is
	// readable; empty when off.
	KeyLog string
	// ReadyTargetDown is how long a target route's origin dials may fail
	// before the side reports not ready; while readiness is asked, a probe
	// dials idle targets so that it notices without clients. Zero means
	// defaults.ReadyTargetDown (10s); negative turns target readiness and
	// the probe off.
	ReadyTargetDown time.Duration
	// AccessLog logs one INFO line per proxied connection when it ends
	// (route, peer, client, bytes each way, duration, how it ended); off
	// when false.
	AccessLog bool
}

func orDefault[T int | time.Duration](d, def T) T {
	if d > 0 {
		return d
	}
	return def
}

// withDefaults returns c with each zero field set to its default, so that
// the engine reads every setting in one place.
func (c Config) withDefaults() Config {
	if c.Connections == 0 {
		c.Connections = defaults.Connections
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = defaults.MaxConnections
	}
	if c.MaxTotalStreams == 0 {
		c.MaxTotalStreams = defaults.MaxTotalStreams
	}
	if c.MaxClientsPerIP == 0 {
		c.MaxClientsPerIP = share(c.MaxTotalStreams, defaults.ClientsPerIPShare)
	}
	c.PeerShare = min(orDefault(c.PeerShare, defaults.PeerShare), 100)
	if c.ReadyTargetDown == 0 {
		c.ReadyTargetDown = defaults.ReadyTargetDown
	}
	c.DialTimeout = orDefault(c.DialTimeout, defaults.DialTimeout)
	c.DrainTimeout = orDefault(c.DrainTimeout, defaults.DrainTimeout)
	if c.UnixSocketMode == 0 {
		c.UnixSocketMode = defaults.UnixSocketMode
	}
	return c
}

// ConfigError is an error in one Config field, such as a Forward address
// already in use. Field is the Go name of the field ("Forward", "Tunnel"),
// so that a caller that filled Config from its own settings can name the
// setting at fault.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string { return "proxy: " + e.Field + ": " + e.Err.Error() }

func (e *ConfigError) Unwrap() error { return e.Err }

// ErrClosed is what Run returns after Shutdown or Close: a normal stop.
var ErrClosed = errors.New("proxy: engine closed")

// Engine runs one side of a tunnel. Its life is one way:
//
//	New ──▶ Run ──▶ Shutdown (drain) ──▶ down
//	              └─▶ Close, Run's ctx ended, or serving failed ──▶ down
//
// once down, always down: an engine is not restarted.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	// obs is told of every event: metrics, and Config.Observer when set.
	obs     Observer
	tunnels tunnelSet

	forwardLns []net.Listener
	tunnelLns  []transport.Listener

	draining atomic.Bool
	// ctx is the context of everything the engine runs: stream handlers'
	// dials and handshakes, accept loops. It ends once the engine is down
	// (Close, Run's context, or the end of Shutdown), aborting what is left.
	ctx    context.Context
	cancel context.CancelCauseFunc
	// loopCtx ends when stopping begins, for the loops that start new work:
	// dialling tunnels, probing targets, periodic tasks.
	loopCtx   context.Context
	stopLoops context.CancelFunc
	// stopping is closed when Shutdown or Close begins, down when the
	// tunnels are closed (goingDown is set just before); Run returns after
	// down, and a Run called twice returns at once.
	stopOnce, downOnce sync.Once
	stopping, down     chan struct{}
	started, goingDown atomic.Bool
	// failed carries the first error that stops serving (an accept loop
	// that cannot go on) to Run.
	failed   chan error
	refusals *logLimiter
	// peerBounds holds, by peer name, the stream bound a peer refused a
	// stream of ours at (see tunnel.peerRefused), so that the tunnel
	// connections opened to it later start from it rather than each
	// losing a client to learn it. It lasts for the process's life: a peer
	// that raised its bound since costs extra tunnel connections only.
	peerBounds sync.Map
	hslog      *HandshakeLog
	// slots holds a token per stream in flight when MaxTotalStreams is set.
	slots   chan struct{}
	streams *inflight      // client and inbound stream handlers
	loops   sync.WaitGroup // accept loops, session servers, dialers

	// routeStats are the clients and origin dials per route, for the status.
	routeStats routeStats
	// tls is the machinery of tls:// routes and of routes joined locally.
	tls tlsRoutes
	// kinds are the route kinds delivered, by wire value (kinds.go).
	kinds map[wire.Kind]route.Kind

	// clientsByIP are the forward clients open per source (MaxClientsPerIP),
	// peerStreams the streams open per peer that it opened (PeerShare).
	clientsByIP quota[netip.Prefix]
	peerStreams quota[string]
	// probeKick asks routineProbeTargets for a round of probes.
	probeKick chan struct{}
	// pool is the dial side's pool of tunnel connections (dialpool.go).
	pool dialPool
}

// New checks cfg and binds every listening socket, so that an address in
// use is reported before Run.
func New(cfg Config) (*Engine, error) {
	cfg = cfg.withDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Mode != ModeLocal && cfg.TLS == nil {
		return nil, errors.New("proxy: no TLS store")
	}
	if cfg.Mode != ModeLocal && cfg.Transport == nil {
		return nil, errors.New("proxy: no transport")
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.HandshakeLog == nil {
		cfg.HandshakeLog = NewHandshakeLog(cfg.Logger.Handler(), 0)
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, metrics: cfg.Metrics, streams: newInflight(), refusals: newLogLimiter(time.Second),
		hslog: cfg.HandshakeLog, probeKick: make(chan struct{}, 1), pool: dialPool{kick: make(chan struct{}, 1)},
		stopping: make(chan struct{}), down: make(chan struct{}), failed: make(chan error, 1)}
	e.obs = cfg.Metrics
	if cfg.Observer != nil {
		e.obs = observers{cfg.Metrics, cfg.Observer}
	}
	e.ctx, e.cancel = context.WithCancelCause(context.Background())
	e.loopCtx, e.stopLoops = context.WithCancel(e.ctx)
	if cfg.MaxTotalStreams > 0 {
		e.slots = make(chan struct{}, cfg.MaxTotalStreams)
	}
	if err := e.initKinds(); err != nil {
		return nil, err
	}
	if err := e.tls.init(cfg); err != nil {
		return nil, err
	}
	e.tunnels.init()
	if err := e.bind(); err != nil {
		e.closeListeners()
		return nil, err
	}
	e.metrics.attach(e)
	return e, nil
}

func (e *Engine) bind() error {
	for _, r := range e.cfg.Forward {
		var ln net.Listener
		var err error
		if r.IsUnix() {
			ln, err = listenUnix(r.Addr, e.cfg.UnixSocketMode, e.cfg.UnixSocketGroup)
		} else {
			ln, err = net.Listen("tcp", r.Addr)
		}
		if err != nil {
			return &ConfigError{Field: "Forward", Err: fmt.Errorf("route %s: %w", routeName(r.Name), err)}
		}
		e.forwardLns = append(e.forwardLns, ln)
	}
	if e.cfg.Mode != ModeListen {
		return nil
	}
	// The policy's refusals inside the TLS stack are counted here, so that
	// no caller has to wire them to the metrics.
	mc := e.muxConfig(e.cfg.TLS.ServerConfig(e.obs.HandshakeFailed))
	mc.OnHandshakeError = e.handshakeFailed
	// Derived from the identity, the key is the same after a restart, so the
	// new process resets the old one's QUIC connections at their next packet
	// and dial sides reconnect at once instead of waiting for a timeout.
	if key, err := auth.DeriveKey(e.cfg.TLS.Authenticator(), "quic stateless reset"); err == nil {
		mc.StatelessResetKey = &key
	} else {
		e.log.Warn("no QUIC stateless reset key: after a restart, peers notice only by their keep-alive timeout", "err", err)
	}
	ln, err := e.cfg.Transport.Listen(e.cfg.Tunnel[0], mc)
	if err != nil {
		return &ConfigError{Field: "Tunnel", Err: err}
	}
	e.tunnelLns = append(e.tunnelLns, ln)
	return nil
}

// ForwardAddrs returns the bound forward listeners' addresses, in route order.
func (e *Engine) ForwardAddrs() []net.Addr {
	out := make([]net.Addr, len(e.forwardLns))
	for i, ln := range e.forwardLns {
		out[i] = ln.Addr()
	}
	return out
}

// TunnelAddr returns the tunnel listener's address, or nil on a dial side.
func (e *Engine) TunnelAddr() net.Addr {
	if len(e.tunnelLns) == 0 {
		return nil
	}
	return e.tunnelLns[0].Addr()
}

// Tunnels describes the tunnel connections that are up.
func (e *Engine) Tunnels() []transport.Info {
	var out []transport.Info
	for _, t := range e.tunnels.snapshot() {
		out = append(out, t.s.Info())
	}
	return out
}

// TunnelsChanged returns a channel closed at the next change of Tunnels.
func (e *Engine) TunnelsChanged() <-chan struct{} { return e.tunnels.changedChan() }

func (e *Engine) muxConfig(tc *tls.Config) *transport.Config {
	mc := e.cfg.Mux
	mc.TLS = tc
	mc.Logger = e.log
	mc.FallbackTimeout = e.cfg.FallbackTimeout
	mc.RetryPrimary = e.cfg.QUICRetry
	mc.FallbackLoss = e.cfg.FallbackLoss
	mc.Authenticate = func(cs *tls.ConnectionState, rw io.ReadWriter, client bool) (transport.Peer, error) {
		role := hybridtls.RoleServer
		if client {
			role = hybridtls.RoleClient
		}
		p, err := e.cfg.TLS.Authenticate(cs, rw, role)
		return transport.Peer{Name: p.Name, PQAuth: p.PQAuth, Sig: auth.SignatureSchemeName(p.Sig), ClassicalReason: p.ClassicalReason}, err
	}
	return &mc
}

func (e *Engine) handshakeFailed(remote net.Addr, err error) {
	reason := transport.Classify(err)
	if hybridtls.LoggedRefusal(string(reason)) {
		return // the TLS policy logged it, and told e.obs, with its reason already
	}
	e.obs.HandshakeFailed(string(reason))
	log := slog.New(e.hslog)
	if reason == transport.ReasonVersionMismatch {
		// crypto/tls names only what the peer offered.
		log.Warn("tunnel handshake failed", "remote", remote.String(), "reason", reason, "version", wire.ALPN, "err", err,
			"hint", "the peer speaks another pqtunnel protocol version than this side's "+wire.ALPN+": run the same release on both sides")
		return
	}
	log.Warn("tunnel handshake failed", "remote", remote.String(), "reason", reason, "err", err)
}

// warnOpenRoutes says, once per route, when a side that accepts more than
// one peer has a route without an allow list: every one of those peers may
// use it.
func (e *Engine) warnOpenRoutes() {
	if e.cfg.TLS == nil || !e.cfg.TLS.Authenticator().AcceptsSeveral() {
		return
	}
	for _, rs := range []struct {
		kind   string
		routes []Route
	}{{"forward", e.cfg.Forward}, {"target", e.cfg.Target}} {
		for _, r := range rs.routes {
			if len(r.Allow) == 0 && !e.tls.joined(r.Name) {
				e.log.Warn("route open to every accepted peer: name the peers allowed on it with @peer+peer", "route", routeName(r.Name), "kind", rs.kind)
			}
		}
	}
}

// expiryWarnings are how long before a CA-mode peer's certificate expires
// its tunnel says so, from the earliest; a tunnel admitted later than one
// of them says so at once.
var expiryWarnings = []time.Duration{24 * time.Hour, time.Hour}

// watchExpiry closes a tunnel when the peer's certificate (or one it sent
// with it) expires, in a mode that relies on their dates (CA mode),
// warning ahead of time: the handshake checked the dates only once, and a
// tunnel may live for months.
func (e *Engine) watchExpiry(t *tunnel) {
	notAfter, ok := e.cfg.TLS.Authenticator().PeerExpiry(t.s.Info().TLS.PeerCertificates)
	if !ok {
		return // a pin does not expire; the identity certificate's dates are not relied on
	}
	e.loops.Add(1)
	go func() {
		defer e.loops.Done()
		e.routineExpire(t, notAfter)
	}()
}

func (e *Engine) routineExpire(t *tunnel, notAfter time.Time) {
	warned := false
	for _, before := range expiryWarnings {
		at := notAfter.Add(-before)
		if time.Until(at) > 0 {
			if !sleepUntilDone(t, at) {
				return
			}
		} else if warned {
			continue // one warning for the points already past
		}
		warned = true
		t.log.Warn("peer certificate expires soon: its tunnel closes then", "not_after", notAfter.UTC(), "in", time.Until(notAfter).Round(time.Second))
	}
	if !sleepUntilDone(t, notAfter) {
		return
	}
	e.tunnels.remove(t)
	t.closeFor(closeExpired) // its streams end with it
	e.obs.TunnelRevoked(t.peerLabel)
	t.log.Warn("peer revoked", "reason", "certificate expired", "not_after", notAfter.UTC(), "streams", t.active.Load())
}

// sleepUntilDone waits until at and reports true, or false as soon as t's
// session ends.
func sleepUntilDone(t *tunnel, at time.Time) bool {
	timer := time.NewTimer(time.Until(at))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-t.s.Done():
		return false
	}
}

// Reauthorize checks every live tunnel's peer against the TLS material in
// force (call it after Store.Swap) and closes, with its streams, each tunnel
// whose peer is no longer accepted or now has another name, which may
// change the routes it is allowed. It returns how many it closed.
func (e *Engine) Reauthorize() int {
	n := 0
	for _, t := range e.tunnels.snapshot() {
		if e.revokeIfRejected(t) {
			n++
		}
	}
	return n
}

// revokeIfRejected closes t, logged as "peer revoked", when the material in
// force no longer accepts its peer under the same name.
func (e *Engine) revokeIfRejected(t *tunnel) bool {
	role := hybridtls.RoleClient
	if e.cfg.Mode == ModeListen {
		role = hybridtls.RoleServer
	}
	info := t.s.Info()
	name, err := e.cfg.TLS.Recheck(&info.TLS, role)
	if err == nil && name == t.peer {
		return false
	}
	// Out of the pool first, so that no new client is sent to it.
	e.tunnels.remove(t)
	t.closeFor(closeRevoked) // its streams end with it
	e.obs.TunnelRevoked(t.peerLabel)
	if err != nil {
		t.log.Warn("peer revoked", "reason", "no longer accepted", "streams", t.active.Load(), "err", err)
	} else {
		t.log.Warn("peer revoked", "reason", "renamed", "new_name", name, "streams", t.active.Load())
	}
	return true
}

// Run serves until Shutdown or Close is called, ctx ends, or serving fails,
// and returns once everything it started has stopped: ErrClosed after
// Shutdown or Close, ctx's cause when ctx ended (the engine then stops at
// once, as with Close), or the error that stopped serving (the engine is
// then closed). Run may be called once.
func (e *Engine) Run(ctx context.Context) error {
	if !e.started.CompareAndSwap(false, true) {
		return errors.New("proxy: Run called twice")
	}
	select {
	case <-e.stopping:
		<-e.down
		return ErrClosed
	default:
	}
	e.warnOpenRoutes()
	for i, ln := range e.forwardLns {
		e.loops.Add(1)
		go e.routineForward(ln, e.cfg.Forward[i])
		e.logForwarding(e.cfg.Forward[i], ln.Addr())
	}
	for _, ln := range e.tunnelLns {
		e.loops.Add(1)
		go e.routineAcceptSessions(ln)
		for _, p := range transport.Parts(ln) {
			e.log.Info("tunnel listening", "transport", p.Transport(), "addr", p.Addr().String())
		}
	}
	loopCtx := e.loopCtx
	e.loops.Add(1)
	go e.routineReleaseMemory(loopCtx, time.Second)
	e.loops.Add(1)
	go e.routineSampleTraffic(loopCtx)
	e.loops.Add(1)
	go e.routineSummarizeHandshakes(loopCtx)
	if e.cfg.ReadyTargetDown > 0 && len(e.cfg.Target) > 0 {
		e.loops.Add(1)
		go e.routineProbeTargets(loopCtx)
	}
	if e.cfg.Mode == ModeDial {
		e.loops.Add(1)
		go e.routineDialPool(loopCtx)
	}
	var err error
	select {
	case <-e.stopping:
		err = ErrClosed
	case <-ctx.Done():
		err = context.Cause(ctx)
		e.Close()
	case err = <-e.failed:
		e.Close()
	}
	<-e.down
	e.loops.Wait()
	<-e.streams.idle()
	return err
}

// fail stops Run with err, the first reason serving cannot go on.
func (e *Engine) fail(err error) {
	select {
	case e.failed <- err:
	default: // Run has its reason already
	}
}

// beginStop stops accepting and starting work, once, and reports whether
// this call did.
func (e *Engine) beginStop() bool {
	first := false
	e.stopOnce.Do(func() {
		first = true
		e.draining.Store(true)
		close(e.stopping)
		e.stopLoops()
		e.closeListeners()
	})
	return first
}

// goDown closes every tunnel connection, ends the engine's context, leaves
// the metrics and lets Run return.
func (e *Engine) goDown() {
	e.downOnce.Do(func() {
		e.goingDown.Store(true)
		// Tunnels first, so that each reports shutdown as its reason rather
		// than its accept loop's ended context.
		e.tunnels.closeAll()
		e.cancel(ErrClosed)
		e.metrics.detach(e)
		close(e.down)
	})
}

// Shutdown stops gracefully: it stops accepting clients and tunnel
// connections, lets open streams finish until ctx ends, and closes every
// tunnel connection. It returns nil when the streams finished, or, when ctx
// ended first, an error wrapping ctx.Err() once the streams still open have
// been closed. A later Shutdown or Close changes nothing; Close during
// Shutdown ends the drain at once, and Shutdown returns ErrClosed, wrapped.
func (e *Engine) Shutdown(ctx context.Context) error {
	if !e.beginStop() {
		select {
		case <-e.down:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("proxy: shutdown: %w", ctx.Err())
		}
	}
	drained := e.drain(ctx)
	if drained {
		e.linger(ctx)
	}
	e.goDown()
	switch {
	case drained:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("proxy: drain: streams still open were closed: %w", ctx.Err())
	}
	return fmt.Errorf("proxy: drain cut short: %w", ErrClosed) // by Close
}

func (e *Engine) closeListeners() {
	for _, ln := range e.forwardLns {
		_ = ln.Close() // errors on close change nothing
	}
	for _, ln := range e.tunnelLns {
		_ = ln.Close()
	}
}

// drain waits for open streams until ctx ends (or Close is called) and
// reports whether they all finished.
func (e *Engine) drain(ctx context.Context) bool {
	attrs := []any{"streams", e.tunnels.active()}
	if dl, ok := ctx.Deadline(); ok {
		attrs = append(attrs, "timeout", time.Until(dl).Round(time.Millisecond))
	}
	e.log.Info("draining", attrs...)
	select {
	case <-e.streams.idle():
	case <-ctx.Done():
		e.log.Warn("drain timeout: closing open streams", "streams", e.tunnels.active())
		return false
	case <-e.ctx.Done():
	}
	// Close ends the streams itself: they did not finish.
	if e.goingDown.Load() {
		return false
	}
	e.log.Info("drained")
	return true
}

// linger gives tunnel connections time to deliver what their finished
// streams sent last before they are closed: closing discards what is still
// queued (yamux's send queue) or unacknowledged (QUIC). Neither transport
// can say when that is done, so it waits a few RTTs, at least 200 ms, and
// not past ctx.
func (e *Engine) linger(ctx context.Context) {
	var wait time.Duration
	for _, t := range e.tunnels.snapshot() {
		wait = max(wait, 200*time.Millisecond)
		if st, ok := transport.SessionStats(t.s); ok {
			wait = max(wait, 4*st.RTT+100*time.Millisecond)
		}
	}
	if wait > 0 {
		t := time.NewTimer(min(wait, time.Second))
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		case <-e.ctx.Done():
		}
	}
}

// Close stops everything at once, without draining: listeners and tunnel
// connections close, and open streams fail. Run then returns promptly.
func (e *Engine) Close() {
	e.beginStop()
	e.goDown()
}

// routineMaintain keeps the tunnel connection of slot up until ctx ends,
// redialling with capped exponential backoff and jitter.
func (e *Engine) routineMaintain(ctx context.Context, slot *dialSlot) {
	defer e.loops.Done()
	peer := slot.target.addr
	b := backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second}
	connectedBefore := false
	for ctx.Err() == nil {
		s, err := e.dial(ctx, slot.target)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			reason := transport.Classify(err)
			e.obs.HandshakeFailed(string(reason))
			_, hint := check.Diagnose(err, e.cfg.Transport, e.cfg.TLS.Policy().Groups, e.cfg.TLS.Authenticator(), e.name)
			if reason == transport.ReasonNoCommonGroup {
				hint += " (it lists other groups, or is not post-quantum: 'pqtunnel check' tells which)"
			}
			wait := b.Next()
			e.log.Warn("tunnel dial failed", "peer", peer, "name", slot.target.entry, "transport", e.cfg.Transport.Name(),
				"groups", hybridtls.GroupNames(e.cfg.TLS.Policy().Groups), "reason", string(reason),
				"hint", hint,
				"retry_in", wait.Round(time.Millisecond), "version", wire.ALPN, "err", err)
			sleepCtx(ctx, wait)
			continue
		}
		if connectedBefore {
			e.obs.Reconnected()
		}
		connectedBefore = true
		up := time.Now()
		t := e.newTunnel(s)
		if !e.admit(t) {
			return // the pool is closed: shutting down
		}
		for t != nil {
			slot.tunnel.Store(t)
			t = e.hold(ctx, peer, t)
		}
		slot.tunnel.Store(nil)
		// Only a tunnel that stayed up resets the backoff: a peer that
		// accepts and at once closes (PQT_MAX_CONNECTIONS) must not be
		// redialled in a tight loop.
		if time.Since(up) > 10*time.Second {
			b.Reset()
		}
		if ctx.Err() == nil {
			sleepCtx(ctx, b.Next())
		}
	}
}

// hold serves the admitted tunnel t until it goes away and returns nil, or
// until its session offers a successor (a Fallback session whose primary
// transport works again, or whose primary loses too much): then the successor joins the pool before t leaves
// it, so that no client arriving during the move finds the pool empty, t is
// retired (no new streams; closed once its streams finish), and the
// successor is returned to be held instead.
func (e *Engine) hold(ctx context.Context, peer string, t *tunnel) *tunnel {
	done := make(chan struct{})
	e.loops.Add(1)
	go func() {
		defer e.loops.Done()
		defer close(done)
		e.serveAdmitted(t)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		// A slot the pool retired drains its tunnel; at shutdown Run
		// drains and closes every tunnel.
		var r *retirement
		if errors.As(context.Cause(ctx), &r) {
			e.retire(t, r.reason)
		}
		<-done
		return nil
	case next := <-transport.Superseded(t.s):
		nt := e.newTunnel(next.Session)
		if !e.admit(nt) {
			<-done // shutting down: t is being closed too
			return nil
		}
		from, to := t.s.Info().Transport, nt.s.Info().Transport
		e.log.Info(next.Why, append([]any{"peer", peer, "tunnel", t.id, "to_tunnel", nt.id, "from", from, "to", to, "reason", next.Reason}, next.Attrs...)...)
		e.obs.TransportMoved(from, to, next.Reason)
		if next.Reason == transport.MoveRTTGrew {
			// The old connection still carries its streams well: a
			// long-lived one (a database's) must not be cut for the move.
			e.retireWhenIdle(t, closeMoved)
		} else {
			e.retire(t, closeMoved)
		}
		return nt
	}
}

// retire takes t out of the pool for new streams and closes it for reason
// once the streams it carries have finished, or after DrainTimeout, or at
// once when the engine closes every tunnel.
func (e *Engine) retire(t *tunnel, reason string) { e.retireBy(t, reason, false) }

// retireWhenIdle is retire for a tunnel that still works: the streams this
// side opened on it may take however long they last; DrainTimeout bounds
// only the peer's once none of this side's is left, since the peer does
// not know t is retired and may go on opening streams on it (reverse mode).
func (e *Engine) retireWhenIdle(t *tunnel, reason string) { e.retireBy(t, reason, true) }

// retireBy is retire; with keepOwn the streams this side opened are not
// bounded by DrainTimeout.
func (e *Engine) retireBy(t *tunnel, reason string, keepOwn bool) {
	e.tunnels.remove(t)
	e.loops.Add(1)
	go func() {
		defer e.loops.Done()
		deadline := time.Now().Add(e.cfg.DrainTimeout)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for t.active.Load() > 0 && ((keepOwn && t.opened.Load() > 0) || time.Now().Before(deadline)) && !e.tunnels.isClosed() {
			select {
			case <-tick.C:
			case <-t.s.Done():
				return
			case <-e.ctx.Done():
				t.closeFor(closeShutdown) // out of the pool, so not closed with it
				return
			}
		}
		if e.tunnels.isClosed() {
			reason = closeShutdown
		}
		t.closeFor(reason) // its streams are done, or out of time
	}()
}

// peerShare is the part of total (a limit, zero or negative for none) one
// peer may hold: PeerShare of it when the material in force accepts
// several peers, else all of it.
func (e *Engine) peerShare(total int) int {
	if !e.cfg.TLS.Authenticator().AcceptsSeveral() {
		return total
	}
	return share(total, e.cfg.PeerShare)
}

// acquireSlot reserves room for one more stream under MaxTotalStreams.
func (e *Engine) acquireSlot() bool {
	if e.slots == nil {
		return true
	}
	select {
	case e.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (e *Engine) releaseSlot() {
	if e.slots != nil {
		<-e.slots
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// dial connects to t's address, verifying the host of its Tunnel entry.
func (e *Engine) dial(ctx context.Context, t dialTarget) (transport.Session, error) {
	return e.cfg.Transport.Dial(ctx, t.addr, e.muxConfig(e.cfg.TLS.ClientConfigFor(check.HostOf(t.entry))))
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func (e *Engine) routineAcceptSessions(ln transport.Listener) {
	defer e.loops.Done()
	for {
		s, err := ln.Accept(e.ctx)
		if err != nil {
			if !errors.Is(err, transport.ErrClosed) && e.ctx.Err() == nil {
				e.fail(fmt.Errorf("proxy: accept tunnel connections on %s: %w", ln.Addr(), err))
			}
			return
		}
		e.loops.Add(1)
		go func() {
			defer e.loops.Done()
			e.serveSession(s)
		}()
	}
}

// serveSession registers s for outgoing streams and serves its incoming
// streams until it goes away.
func (e *Engine) serveSession(s transport.Session) { e.serveTunnel(e.newTunnel(s)) }

func (e *Engine) newTunnel(s transport.Session) *tunnel {
	info := s.Info()
	t := &tunnel{s: s, id: nextTunnelID.Add(1), since: time.Now(), peer: info.Peer.Name, peerLabel: e.peerLabel(info.Peer.Name)}
	t.bound, _ = transport.SessionStreamBound(s)
	if b, ok := e.peerBounds.Load(t.peer); ok {
		t.refusedAt.Store(b.(int64))
	}
	t.log = e.log.With("tunnel", t.id, "transport", info.Transport, "group", hybridtls.GroupName(info.TLS.CurveID), "sig", info.Peer.Sig, "peer", info.Peer.Name)
	return t
}

func (e *Engine) serveTunnel(t *tunnel) {
	if e.admit(t) {
		e.serveAdmitted(t)
	}
}

// admit puts t in the pool and logs it connected, or refuses and closes it
// when the pool is full or closed.
func (e *Engine) admit(t *tunnel) bool {
	s := t.s
	info := s.Info()
	log := t.log
	limit := 0
	if e.cfg.Mode == ModeListen {
		limit = e.cfg.MaxConnections
	}
	peerLimit := e.peerShare(limit)
	if err := e.tunnels.add(t, limit, peerLimit); err != nil {
		if errors.Is(err, errPeerShare) {
			limit = peerLimit
		}
		e.warnRefusal(log, "tunnel refused", e.poolRefusal(err), "limit", limit, "remote", info.Remote.String())
		e.obs.HandshakeFailed("busy")
		_ = s.Close() // refused
		return false
	}
	if hybridtls.IsPostQuantum(info.TLS.CurveID) {
		log.Info("tunnel connected", "tls", "1.3", "pq_auth", info.Peer.PQAuth, "remote", info.Remote.String(), "handshake", info.Handshake.Round(10*time.Microsecond))
	} else {
		log.Warn("tunnel connected WITHOUT post-quantum key exchange "+pqPreferNote(e.cfg.TLS.Policy()), "tls", "1.3", "pq_auth", info.Peer.PQAuth, "remote", info.Remote.String(), "handshake", info.Handshake.Round(10*time.Microsecond))
	}
	if !info.Peer.PQAuth {
		log.Warn("peer authenticated classically only", "pq_auth", false, "reason", info.Peer.ClassicalReason)
	}
	if e.cfg.KeyLog != "" {
		log.Warn("tunnel secrets written to the key log: anyone who reads it can decrypt this tunnel", "keylog", e.cfg.KeyLog)
	}
	e.obs.TunnelUp(info)
	e.watchExpiry(t)
	// A reload between this tunnel's handshake and its joining the pool
	// found it in neither place; the pool holds it now, so any later
	// Reauthorize sees it, and this check covers the reload before. A
	// revoked tunnel is closed and serveAdmitted winds it down as usual.
	e.revokeIfRejected(t)
	return true
}

// serveAdmitted serves the streams the peer opens on the admitted tunnel t
// until its session goes away, then takes it out of the pool.
func (e *Engine) serveAdmitted(t *tunnel) {
	s := t.s
	info := s.Info()
	log := t.log
	var err error
	// The loop ends when the session does (the engine closes every tunnel
	// as it goes down), so its context need not end: one that cannot lets
	// a transport skip a hand-off per stream (tlsmux).
	acceptCtx := context.WithoutCancel(e.ctx)
	defer func() {
		e.tunnels.remove(t)
		reason := t.closeReason(err)
		e.obs.TunnelDown(info, reason)
		_ = s.Close() // already gone, or being torn down
		attrs := []any{"reason", reason, "up", time.Since(t.since).Round(time.Millisecond), "streams", t.active.Load(), "err", err}
		if expectedClose(reason) {
			log.Info("tunnel disconnected", attrs...)
		} else {
			log.Warn("tunnel disconnected", attrs...)
		}
	}()
	for {
		var st transport.Stream
		st, err = s.AcceptStream(acceptCtx)
		if err != nil {
			return
		}
		e.streams.add()
		go func() {
			defer e.streams.done()
			e.handleInbound(st, t)
		}()
	}
}

// expectedClose reports whether a tunnel that ended for reason was closed on
// purpose, by either side, rather than lost.
func expectedClose(reason string) bool {
	switch reason {
	case string(transport.ClosePeer), string(transport.CloseLocal), closeShutdown, closeRevoked, closeExpired, closeMoved, closeSurplus, closeAddressGone:
		return true
	}
	return false
}

// routineForward accepts clients on one forward route's TCP or Unix socket.
func (e *Engine) routineForward(ln net.Listener, r Route) {
	defer e.loops.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if acceptBroken(err) {
				e.fail(fmt.Errorf("proxy: forward route %s: accept: %w", routeName(r.Name), err))
				return
			}
			e.log.Warn("accept failed", "route", routeName(r.Name), "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		e.streams.add()
		go func() {
			defer e.streams.done()
			e.handleAccepted(c.(sockConn), r) // *net.TCPConn or *net.UnixConn
		}()
	}
}

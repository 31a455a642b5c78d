package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/check"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/defaults"
	"github.com/pqtunnel/pqtunnel/route"
	"github.com/pqtunnel/pqtunnel/route/tcproute"
	"github.com/pqtunnel/pqtunnel/tlsroute"
)

// Sides of a TLS route, in logs and metrics.
const (
	sideTerminate = "terminate"
	sideOriginate = "originate"
)

// tlsRoutes is the engine's machinery for tls:// routes and for routes
// joined on this side without a tunnel.
type tlsRoutes struct {
	// terminators are by index of Config.Forward; nil for a plain route.
	terminators []*tlsroute.Terminator
	// originators are by target route name.
	originators map[string]*tlsroute.Originator
	// local maps a forward route's name to the target it joins directly.
	local map[string]Route
	// handshakes holds a token per terminating handshake in flight, up to
	// Mux.MaxHandshakes.
	handshakes chan struct{}
}

// LocalJoins returns, by forward route name, the target route of the same
// name that the forward route joins on this side without a tunnel: those
// where at least one of the two is a tls:// route. A plain forward route
// and a plain target route of the same name keep their meaning: the
// forward route goes through the tunnel, the target serves the peer.
func LocalJoins(forward, target []Route) map[string]Route {
	out := map[string]Route{}
	for _, f := range forward {
		for _, t := range target {
			if f.Name == t.Name && (f.IsTLS() || t.IsTLS()) {
				out[f.Name] = t
			}
		}
	}
	return out
}

// NeedsTunnel reports whether some route goes through a tunnel: a forward
// or target route that is not joined locally.
func NeedsTunnel(forward, target []Route) bool {
	local := LocalJoins(forward, target)
	for _, r := range forward {
		if _, ok := local[r.Name]; !ok {
			return true
		}
	}
	for _, r := range target {
		if _, ok := local[r.Name]; !ok {
			return true
		}
	}
	return false
}

func (tr *tlsRoutes) init(cfg Config) error {
	tr.local = LocalJoins(cfg.Forward, cfg.Target)
	tr.originators = map[string]*tlsroute.Originator{}
	tr.terminators = make([]*tlsroute.Terminator, len(cfg.Forward))
	if cfg.Mode == ModeLocal && NeedsTunnel(cfg.Forward, cfg.Target) {
		return &ConfigError{Field: "Mode", Err: errors.New("a route goes through a tunnel, but no tunnel is configured")}
	}
	for i, r := range cfg.Forward {
		if !r.IsTLS() {
			continue
		}
		if cfg.TLSRoutes == nil || len(cfg.TLSRoutes.Material().Certificates) == 0 {
			return &ConfigError{Field: "TLSCert", Err: fmt.Errorf("route %s terminates TLS but no certificate is configured", routeName(r.Name))}
		}
		tr.terminators[i] = tlsroute.NewTerminator(cfg.TLSRoutes, r.ALPN)
	}
	for _, r := range cfg.Target {
		if !r.IsTLS() {
			continue
		}
		if cfg.TLSRoutes == nil {
			return &ConfigError{Field: "Target", Err: fmt.Errorf("route %s originates TLS but no TLS route store is configured", routeName(r.Name))}
		}
		name := r.ServerName
		if name == "" {
			name = check.HostOf(r.Addr)
		}
		tr.originators[r.Name] = tlsroute.NewOriginator(cfg.TLSRoutes, name, r.ALPN)
	}
	tr.handshakes = make(chan struct{}, orDefault(cfg.Mux.MaxHandshakes, defaults.MaxHandshakes))
	return nil
}

// joined reports whether the route of that name joins locally.
func (tr *tlsRoutes) joined(name string) bool {
	_, ok := tr.local[name]
	return ok
}

func (e *Engine) logForwarding(r Route, addr net.Addr) {
	attrs := []any{"route", routeName(r.Name), "listen", addr.String()}
	if r.IsTLS() {
		attrs = append(attrs, "tls", sideTerminate)
		if len(r.ALPN) > 0 {
			attrs = append(attrs, "alpn", strings.Join(r.ALPN, "+"))
		}
	}
	if t, ok := e.tls.local[r.Name]; ok {
		attrs = append(attrs, "local_target", t.String())
	}
	e.log.Info("forwarding", attrs...)
}

// tlsEnd adapts a TLS connection over a socket: CloseWrite sends
// close_notify, Abort resets (TCP) or closes (Unix) the socket under it.
type tlsEnd struct {
	*tls.Conn
	raw sockConn
}

func (t tlsEnd) Abort() { sockEnd{t.raw}.Abort() }

// handleAccepted serves one client of a forward route: a plain route goes
// through the tunnel at once; a tls:// route first completes the TLS
// handshake; a route joined locally is carried to its target here.
func (e *Engine) handleAccepted(c sockConn, r Route) {
	label := routeName(r.Name)
	term := e.terminator(r)
	target, local := e.tls.local[r.Name]
	// The access record starts at accept, so that a client refused before
	// it is carried (per-source bound, TLS handshake) has its line too, and
	// a tls:// client's duration includes its handshake.
	direction := "out"
	if local {
		direction = "local"
	}
	rec := e.newAccessRecord(direction, label, clientLabel(c), time.Now())
	if local {
		rec.delivers(target.Addr)
	}
	// The per-source bound comes first, so that it also bounds the TLS
	// handshakes of a tls:// label and the clients of a local join.
	source := clientKey(c.RemoteAddr())
	if !e.clientsByIP.take(source, e.cfg.MaxClientsPerIP) {
		e.warnRefusal(e.log.With("route", label, "client", clientLabel(c)), "client refused", e.name("MaxClientsPerIP")+" reached", "limit", e.cfg.MaxClientsPerIP, "source", source.String())
		e.obs.StreamFailed(label, "client_limit")
		sockEnd{c}.Abort()
		rec.refused("client_limit", nil)
		e.logAccess(rec)
		return
	}
	// The handlers hand the connection on to a goroutine of its own; the
	// one that ends it gives the source's slot back and writes the access
	// line.
	give := func() { e.clientsByIP.give(source) }
	if term == nil && !local {
		e.handleClient(sockEnd{c}, c, r, rec, give)
		return
	}
	var client route.Conn = sockEnd{c}
	if term != nil {
		tc, ok := e.terminate(c, r, term, rec)
		if !ok {
			give()
			e.logAccess(rec)
			return
		}
		client = tlsEnd{tc, c}
	}
	if local {
		e.joinLocal(client, c, r, target, rec, give)
		return
	}
	e.handleClient(client, c, r, rec, give)
}

func (e *Engine) terminator(r Route) *tlsroute.Terminator {
	for i, f := range e.cfg.Forward {
		if f.Name == r.Name {
			return e.tls.terminators[i]
		}
	}
	return nil
}

// tlsHandshakeTimeout bounds a tls:// route's handshake: Mux.HandshakeTimeout.
func (e *Engine) tlsHandshakeTimeout() time.Duration {
	return orDefault(e.cfg.Mux.HandshakeTimeout, defaults.HandshakeTimeout)
}

// terminate runs the TLS handshake with a client of a tls:// forward route,
// bounded in time and in how many run at once, and reports it; a refusal
// goes into rec too.
func (e *Engine) terminate(c sockConn, r Route, term *tlsroute.Terminator, rec *accessRecord) (*tls.Conn, bool) {
	route := routeName(r.Name)
	log := e.log.With("route", route, "tls", sideTerminate, "client", clientLabel(c))
	select {
	case e.tls.handshakes <- struct{}{}:
		defer func() { <-e.tls.handshakes }()
	default:
		e.warnRefusal(log, "TLS handshake refused", "busy", "limit", cap(e.tls.handshakes), "hint", e.name("MaxHandshakes")+" handshakes are running")
		e.obs.TLSRefused(route, sideTerminate, "busy")
		sockEnd{c}.Abort()
		rec.refused("busy", nil)
		return nil, false
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.tlsHandshakeTimeout())
	defer cancel()
	tc, info, err := term.Handshake(ctx, c)
	if err != nil {
		rec.refused(e.tlsFailed(log, route, sideTerminate, err), err)
		_ = c.Close() // after the alert, a FIN: the client reads the alert
		return nil, false
	}
	e.tlsConnected(log, r, sideTerminate, info, e.cfg.TLSRoutes.SNILabel(info.SNI))
	return tc, true
}

// originate runs the TLS handshake with a tls:// target's server over oc.
func (e *Engine) originate(oc sockConn, r Route, log *slog.Logger) (tlsEnd, error) {
	route := routeName(r.Name)
	o := e.tls.originators[r.Name]
	log = log.With("tls", sideOriginate, "server", r.Addr)
	ctx, cancel := context.WithTimeout(e.ctx, e.tlsHandshakeTimeout())
	defer cancel()
	tc, info, err := o.Handshake(ctx, oc)
	if err != nil {
		e.tlsFailed(log, route, sideOriginate, err)
		return tlsEnd{}, fmt.Errorf("TLS to origin %s: %w", r.Addr, err)
	}
	e.tlsConnected(log, r, sideOriginate, info, o.ServerName())
	return tlsEnd{tc, oc}, nil
}

// tlsFailed logs a failed tls:// route handshake, at most once a second per
// reason, and counts it; it returns the reason, the metric's label.
func (e *Engine) tlsFailed(log *slog.Logger, route, side string, err error) string {
	reason := tlsroute.ReasonTLS
	attrs := []any{}
	var he *tlsroute.HandshakeError
	if errors.As(err, &he) {
		reason = he.Reason
		attrs = append(attrs, "offered", hybridtls.GroupNames(he.Offered))
		err = he.Err // the reason and groups are attributes already
	}
	e.obs.TLSRefused(route, side, reason)
	e.routeStats.tlsRefused(tlsKind(side), route)
	policy := e.cfg.TLSRoutes.Policy()
	switch reason {
	case tlsroute.ReasonNotPostQuantum:
		attrs = append(attrs, "pq", policy.Mode)
		if side == sideTerminate {
			attrs = append(attrs, "accepts", hybridtls.GroupNames(policy.Curves()), "hint", "the client offered no post-quantum key exchange; it needs e.g. OpenSSL 3.5, a current browser or Go 1.24+ (or set "+policy.NameOf(hybridtls.SettingMode)+"=prefer to accept it, logged and counted)")
		} else {
			attrs = append(attrs, "hint", "the server accepted none of the offered post-quantum groups: it is not post-quantum, or lists other groups (set "+policy.NameOf(hybridtls.SettingMode)+"=prefer to accept X25519, logged and counted)")
		}
	case tlsroute.ReasonNoCommonGroup:
		if side == sideTerminate {
			attrs = append(attrs, "accepts", hybridtls.GroupNames(policy.Curves()))
		}
	}
	e.warnRefusal(log, "TLS handshake refused", reason, append(attrs, "err", err)...)
	return reason
}

// tlsConnected logs and counts one completed tls:// route handshake.
func (e *Engine) tlsConnected(log *slog.Logger, r Route, side string, info tlsroute.Info, sniLabel string) {
	route := routeName(r.Name)
	group := hybridtls.GroupName(info.Group)
	e.obs.TLSHandshake(route, side, info, sniLabel)
	e.routeStats.tlsConnected(tlsKind(side), route, info)
	attrs := []any{"group", group, "sig", info.Sig, "sni", info.SNI, "alpn", info.ALPN, "resumed", info.Resumed, "handshake", info.Handshake.Round(10 * time.Microsecond)}
	if info.Client != "" {
		attrs = append(attrs, "client_cert", info.Client)
	}
	if info.PostQuantum() {
		log.Info("TLS connected", attrs...)
	} else {
		log.Warn("TLS connected WITHOUT post-quantum key exchange "+pqPreferNote(e.cfg.TLSRoutes.Policy()), attrs...)
	}
}

func tlsKind(side string) string {
	if side == sideTerminate {
		return KindForward
	}
	return KindTarget
}

// dialTarget dials a target route's origin, sends the PROXY header when
// configured, and for a tls:// target completes the TLS handshake.
func (e *Engine) dialTarget(target Route, client, server netip.AddrPort, peer string, log *slog.Logger) (route.Conn, error) {
	route := routeName(target.Name)
	d := net.Dialer{Timeout: e.dialTimeout()}
	dialStart := time.Now()
	c, err := d.DialContext(e.ctx, target.network(), target.Addr)
	e.obs.OriginDialed(route, time.Since(dialStart))
	e.routeStats.dialed(route, dialStart, err, false)
	if err != nil {
		return nil, &dialError{fmt.Errorf("dial origin %s: %w", target.Addr, err)}
	}
	oc := c.(sockConn) // *net.TCPConn or *net.UnixConn
	if e.cfg.ProxyProtocol != 0 {
		if err := writeProxyHeader(oc, e.cfg.ProxyProtocol, client, server, peer); err != nil {
			_ = oc.Close()
			return nil, fmt.Errorf("send PROXY header to origin %s: %w", target.Addr, err)
		}
	}
	if !target.IsTLS() {
		return sockEnd{oc}, nil
	}
	te, err := e.originate(oc, target, log)
	if err != nil {
		_ = oc.Close()
		return nil, err
	}
	return te, nil
}

// isTLSRefusal reports a failed tls:// route handshake, which tlsFailed
// has logged and counted already.
func isTLSRefusal(err error) bool {
	var he *tlsroute.HandshakeError
	return errors.As(err, &he)
}

// dialError is a failure to connect to an origin, as opposed to one after
// connecting (PROXY header, TLS).
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }

func (e *dialError) Unwrap() error { return e.err }

// joinLocal carries a client of a forward route to the target route of
// the same name on this side, without a tunnel; done runs once the client
// is gone, and then its access line is written.
func (e *Engine) joinLocal(client route.Conn, c sockConn, r, target Route, rec *accessRecord, done func()) {
	start := time.Now()
	route := routeName(r.Name)
	log := e.log.With("route", route, "client", clientLabel(c))
	o := e.obs
	var undo undoList
	defer undo.run()
	undo.add(done)
	undo.add(func() { e.logAccess(rec) }) // runs after the cleanups added below: once the connection has ended
	o.StreamOpened(route, "local")
	undo.add(func() { o.StreamClosed(route, "local") })
	undo.add(e.routeStats.opened(KindForward, route))
	if !e.acquireSlot() {
		e.warnRefusal(log, "client refused", e.name("MaxTotalStreams")+" reached", "limit", e.cfg.MaxTotalStreams)
		o.StreamFailed(route, "busy")
		rec.refused("busy", nil)
		client.Abort()
		return
	}
	undo.add(e.releaseSlot)
	// No peer: the addresses are those of the client this side accepted.
	origin, err := e.dialTarget(target, localAddrPort(c.RemoteAddr()), localAddrPort(c.LocalAddr()), "", log)
	if err != nil {
		reason := "origin_error"
		var de *dialError
		switch {
		case errors.As(err, &de) && isTimeout(err):
			reason = "origin_timeout"
		case errors.As(err, &de) && check.IsRefused(err):
			reason = "origin_refused"
		case isTLSRefusal(err):
			reason = "origin_tls"
		}
		o.StreamFailed(route, reason)
		rec.refused(reason, err)
		if reason != "origin_tls" { // tlsFailed logged that one
			e.warnRefusal(log, "client refused", reason, "origin", target.Addr, "err", err)
		}
		client.Abort()
		return
	}
	e.carry(&undo, func() { e.pipeLocal(client, origin, route, target.Addr, log, start, rec) })
}

func (e *Engine) pipeLocal(client, origin route.Conn, label, target string, log *slog.Logger, start time.Time, rec *accessRecord) {
	o := e.obs
	up, down, err := tcproute.Join(client, origin, e.cfg.StreamIdleTimeout)
	err = e.namedIdle(err)
	o.StreamBytes(label, up, down)
	if benign(err) {
		rec.finished(up, down, nil)
	} else {
		rec.finished(up, down, err)
	}
	if err != nil && !benign(err) {
		o.StreamFailed(label, "aborted")
		log.Info("connection aborted", "origin", target, "bytes_up", up, "bytes_down", down, "duration", time.Since(start).Round(time.Millisecond), "err", err)
		return
	}
	log.Debug("connection closed", "origin", target, "bytes_up", up, "bytes_down", down, "duration", time.Since(start).Round(time.Millisecond))
}

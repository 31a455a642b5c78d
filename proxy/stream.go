package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/pqtunnel/pqtunnel/check"
	"github.com/pqtunnel/pqtunnel/internal/defaults"
	"github.com/pqtunnel/pqtunnel/route"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// undoList runs cleanups in reverse order; it lets a handler pass what is
// still to be released on to the goroutine that carries the connection.
type undoList []func()

func (u *undoList) add(f func()) { *u = append(*u, f) }

func (u *undoList) run() {
	for i := len(*u) - 1; i >= 0; i-- {
		(*u)[i]()
	}
	*u = nil
}

// carry runs f in a fresh goroutine that then owns the cleanups in u, so
// that the stack a handler grew while setting up is not held for the
// connection's whole life (most proxied connections are idle most of the time).
func (e *Engine) carry(u *undoList, f func()) {
	release := *u
	*u = nil
	e.streams.add()
	go func() {
		defer e.streams.done()
		defer release.run()
		f()
	}()
}

// warnRefusal logs a per-connection refusal, at most once a second for each
// message and reason, saying how many like it were left out.
func (e *Engine) warnRefusal(log *slog.Logger, msg, reason string, attrs ...any) {
	ok, suppressed := e.refusals.allow(msg + "\x00" + reason)
	if !ok {
		return
	}
	attrs = append([]any{"reason", reason}, attrs...)
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	log.Warn(msg, attrs...)
}

// handleClient carries one client of a forward route through a tunnel
// stream, by the route's kind: client is c itself, or the TLS connection
// terminated over it. done runs once the client is gone, and then rec's
// access line is written.
func (e *Engine) handleClient(client route.Conn, c sockConn, r Route, rec *accessRecord, done func()) {
	start := time.Now()
	label := routeName(r.Name)
	log := e.log.With("route", label, "client", clientLabel(c))
	o := e.obs
	var undo undoList
	defer undo.run()
	undo.add(done)
	undo.add(func() { e.logAccess(rec) }) // runs after the cleanups added below: once the connection has ended
	fail := func(reason string, err error) {
		o.StreamFailed(label, reason)
		rec.refused(reason, err)
		client.Abort()
	}
	o.StreamOpened(label, "out")
	undo.add(func() { o.StreamClosed(label, "out") })
	undo.add(e.routeStats.opened(KindForward, label))
	if !e.acquireSlot() {
		e.warnRefusal(log, "client refused", e.name("MaxTotalStreams")+" reached", "limit", e.cfg.MaxTotalStreams)
		fail("busy", nil)
		return
	}
	undo.add(e.releaseSlot)
	// Only a tunnel of an allowed peer: the visitor's first bytes go out
	// with the stream's preamble, so the choice is made before any is read.
	t, full, waited := e.pickOpened(r)
	if t == nil && full != nil {
		e.refuseFull(log, full, waited)
		fail("busy", nil)
		return
	}
	if t == nil {
		if len(r.Allow) > 0 {
			e.warnRefusal(log, "client refused", "no tunnel connection of an allowed peer up", "allow", strings.Join(r.Allow, "+"))
		} else {
			e.warnRefusal(log, "client refused", "no tunnel connection up")
		}
		fail("no_tunnel", nil)
		return
	}
	undo.add(t.releaseOpened)
	rec.via(t)
	l := &localSide{e: e, t: t, r: r, c: c, label: label, log: t.log.With("route", label, "client", clientLabel(c)), start: start, rec: rec, undo: &undo, fail: fail}
	e.kinds[r.Kind].Forward(client, l)
	if !l.carried && !l.failed {
		client.Abort()
		if l.st != nil {
			l.st.Abort()
		}
	}
}

// localSide is the engine's side of one client a kind's Forward carries.
type localSide struct {
	e     *Engine
	t     *tunnel
	r     Route
	c     sockConn
	label string
	log   *slog.Logger
	start time.Time
	rec   *accessRecord
	undo  *undoList
	fail  func(reason string, err error)
	// st is the stream Open opened, early the client bytes in its first frame.
	st    route.Conn
	early int64
	// carried is set by Carry, failed by an Open that refused the client.
	carried, failed bool
}

var _ route.Local = (*localSide)(nil)

// Open opens the client's stream on l's tunnel and sends the preamble and
// what appendFirst adds in one frame.
func (l *localSide) Open(appendFirst func([]byte) ([]byte, error)) (route.Conn, error) {
	e, t, log := l.e, l.t, l.log
	ctx, cancel := context.WithTimeout(e.ctx, e.dialTimeout()+orDefault(e.cfg.Mux.HandshakeTimeout, defaults.HandshakeTimeout))
	st, err := t.s.OpenStream(ctx)
	cancel()
	if errors.Is(err, transport.ErrConnMemory) {
		e.warnRefusal(log, "client refused", e.name("MaxConnMemory")+" reached", "limit", orDefault(e.cfg.Mux.MaxConnMemory, defaults.MaxConnMemory), "err", err)
		l.refuse("busy", err)
		return nil, err
	}
	if err != nil {
		e.warnRefusal(log, "client refused", "open stream failed", "err", err)
		l.refuse("open_failed", err)
		return nil, err
	}
	buf := firstFrames.Get().(*[]byte)
	hdr, err := wire.AppendRequest((*buf)[:0], wire.Request{Kind: l.r.Kind, Route: l.r.Name, Client: wireAddr(l.c.RemoteAddr()), Server: wireAddr(l.c.LocalAddr())})
	preamble := len(hdr)
	if appendFirst != nil && err == nil {
		hdr, err = appendFirst(hdr)
	}
	if err == nil {
		_, err = st.Write(hdr)
	}
	firstFrames.Put(buf) // Write does not keep hdr
	if errors.Is(err, transport.ErrStreamRefused) {
		// The peer's refusal came back before the first frame went.
		l.learnPeerBound()
		e.warnPeerRefused(log)
		st.Reset()
		l.refuse("busy", err)
		return nil, err
	}
	if err != nil {
		e.warnRefusal(log, "client refused", "send preamble failed", "err", err)
		st.Reset()
		l.refuse("open_failed", err)
		return nil, err
	}
	l.early = int64(len(hdr) - preamble)
	// The peer's response is read before the first byte from the stream.
	l.st = streamEnd{&openedStream{Stream: t.counted(st, l.early), timeout: e.dialTimeout() + 5*time.Second}}
	return l.st, nil
}

func (l *localSide) refuse(reason string, err error) {
	l.failed = true
	l.fail(reason, err)
}

func (l *localSide) IdleTimeout() time.Duration { return l.e.cfg.StreamIdleTimeout }

// Carry runs copy on a goroutine that then owns the client's cleanups.
func (l *localSide) Carry(copy route.Copy) {
	l.carried = true
	l.e.carry(l.undo, func() {
		up, down, err := copy()
		if errors.Is(err, transport.ErrStreamRefused) {
			l.learnPeerBound()
		}
		l.e.clientEnded(up+l.early, down, err, l.label, l.log, l.start, l.rec)
	})
}

// learnPeerBound takes the peer's refusal of this stream as its stream
// bound on the tunnel. Counted before this stream is released: the peer
// carried the others open now, and no more.
func (l *localSide) learnPeerBound() {
	if b := l.t.peerRefused(l.t.opened.Load()); b > 0 {
		l.e.peerBounds.Store(l.t.peer, b)
	}
	l.e.kickPool()
}

// warnPeerRefused says that the peer refused a client's stream. yamux
// refuses a stream over its limit with a bare reset; said here with the
// settings that set the limit, since this side's own ones let the stream
// through.
func (e *Engine) warnPeerRefused(log *slog.Logger) {
	e.warnRefusal(log, "client refused", "the peer refused the stream: it carries its stream bound on this tunnel connection, or it is going away",
		"hint", "the peer's "+e.name("MaxStreams")+" or "+e.name("MaxConnMemory")+" is lower than this side's; this side keeps to the peer's on every tunnel connection to it, and a dial side opens more of them, up to its "+e.name("MaxConnections"))
}

// firstFrames holds buffers for a stream's first frame: the preamble, at
// most 4+3*255 bytes, and the client bytes a kind sends with it.
var firstFrames = sync.Pool{New: func() any { b := make([]byte, 0, 1024+route.FirstDataSize); return &b }}

// clientEnded accounts a forward client whose copy ended: up counts the
// bytes of the stream's first frame.
func (e *Engine) clientEnded(up, down int64, err error, label string, log *slog.Logger, start time.Time, rec *accessRecord) {
	o := e.obs
	err = e.namedIdle(err)
	o.StreamBytes(label, up, down)
	var refused *refusedError
	peerBound := errors.Is(err, transport.ErrStreamRefused)
	switch {
	case errors.As(err, &refused):
		rec.refused(refused.resp.Status.Label(), errors.New(refused.resp.Message))
	case peerBound:
		rec.refused(wire.StatusBusy.Label(), err)
	}
	if benign(err) {
		rec.finished(up, down, nil)
	} else {
		rec.finished(up, down, err)
	}
	switch {
	case refused != nil:
		o.StreamFailed(label, refused.resp.Status.Label())
		e.warnRefusal(log, "stream refused by peer", refused.resp.Status.String(), "err", refused.resp.Message)
	case peerBound:
		o.StreamFailed(label, wire.StatusBusy.Label())
		e.warnPeerRefused(log)
	case errors.Is(err, route.ErrIdle):
		o.StreamFailed(label, "idle")
		log.Info("stream closed: idle", "idle_timeout", e.cfg.StreamIdleTimeout, "bytes_up", up, "bytes_down", down, "duration", time.Since(start).Round(time.Millisecond))
	case err != nil && !benign(err):
		o.StreamFailed(label, "aborted")
		log.Info("stream aborted", "bytes_up", up, "bytes_down", down, "duration", time.Since(start).Round(time.Millisecond), "err", err)
	default:
		log.Debug("stream closed", "bytes_up", up, "bytes_down", down, "duration", time.Since(start).Round(time.Millisecond))
	}
}

// openedStream reads the peer's response before the first payload byte.
// A peer that refuses a stream answers and then stops reading it, so a
// write racing the refusal fails: the write returns the refusal instead,
// and a refused client is accounted as refused whichever direction ends
// first.
type openedStream struct {
	transport.Stream
	timeout time.Duration
	once    sync.Once
	// respErr is nil once the peer accepted the stream; set under once.
	respErr error
}

type refusedError struct{ resp wire.Response }

func (r *refusedError) Error() string {
	return fmt.Sprintf("peer refused stream: %s: %s", r.resp.Status, r.resp.Message)
}

// response reads the peer's response once; a caller that comes while
// another reads it waits for that read, which its deadline bounds.
func (o *openedStream) response() error {
	o.once.Do(func() {
		_ = o.SetReadDeadline(time.Now().Add(o.timeout)) // failure shows as a read error
		resp, err := wire.ReadResponse(o.Stream)
		if err != nil {
			o.respErr = fmt.Errorf("read stream response: %w", err)
			return
		}
		_ = o.SetReadDeadline(time.Time{})
		if resp.Status != wire.StatusOK {
			o.respErr = &refusedError{resp}
		}
	})
	return o.respErr
}

func (o *openedStream) Read(p []byte) (int, error) {
	if err := o.response(); err != nil {
		return 0, err
	}
	return o.Stream.Read(p)
}

func (o *openedStream) Write(p []byte) (int, error) {
	n, err := o.Stream.Write(p)
	if err != nil {
		var refused *refusedError
		if errors.As(o.response(), &refused) {
			return n, refused
		}
	}
	return n, err
}

func (e *Engine) dialTimeout() time.Duration { return e.cfg.DialTimeout }

// handleInbound serves one stream the peer opened: read the preamble,
// admit it to a target route, and hand it to the route's kind, which dials
// the target, answers, and copies.
func (e *Engine) handleInbound(st transport.Stream, t *tunnel) {
	start := time.Now()
	log := t.log
	var undo undoList
	defer undo.run()
	t.active.Add(1)
	undo.add(func() { t.active.Add(-1) })
	e.noteLoad(t)
	_ = st.SetReadDeadline(time.Now().Add(orDefault(e.cfg.Mux.HandshakeTimeout, defaults.HandshakeTimeout)))
	req, err := wire.ReadRequest(st)
	if err != nil {
		log.Warn("stream rejected", "reason", "bad preamble", "err", err)
		st.Reset()
		return
	}
	if req.Kind == wire.KindRouteQuery {
		e.answerRouteQuery(st, t, req.Route)
		return
	}
	rec := e.newAccessRecord("in", routeName(req.Route), req.Client, start)
	rec.via(t)
	undo.add(func() { e.logAccess(rec) })
	_ = st.SetReadDeadline(time.Time{})
	// The peer chooses the route name: only names in PQT_TARGET become metric
	// labels, so a peer cannot grow the metric series without bound.
	target, known := e.target(req.Route)
	label := "unknown"
	if known {
		label = routeName(req.Route)
	}
	allowed := known && target.allows(t.peer)
	log = log.With("route", routeName(req.Route), "client", req.Client)
	o := e.obs
	o.StreamOpened(label, "in")
	undo.add(func() { o.StreamClosed(label, "in") })
	undo.add(e.routeStats.opened(KindTarget, label))
	refuse := func(s wire.Status, msg string, err error) {
		o.StreamFailed(label, s.Label())
		rec.refused(s.Label(), errOrMsg(err, msg))
		if !isTLSRefusal(err) { // a failed TLS handshake with the origin is logged already
			e.warnRefusal(log, "stream refused", s.String(), "err", errOr(err, msg))
		}
		_, _ = st.Write(wire.AppendResponse(nil, wire.Response{Status: s, Message: msg})) // best effort: we close next
		_ = st.Close()
	}
	if e.draining.Load() {
		refuse(wire.StatusDraining, "peer is shutting down", nil)
		return
	}
	if !e.acquireSlot() {
		refuse(wire.StatusBusy, fmt.Sprintf("peer carries %s=%d streams already", e.name("MaxTotalStreams"), e.cfg.MaxTotalStreams), nil)
		return
	}
	undo.add(e.releaseSlot)
	if n := e.peerShare(e.cfg.MaxTotalStreams); !e.peerStreams.take(t.peer, n) {
		refuse(wire.StatusBusy, fmt.Sprintf("peer carries %d streams this side opened already, its share (%s) of %s=%d", n, e.name("PeerShare"), e.name("MaxTotalStreams"), e.cfg.MaxTotalStreams), nil)
		return
	}
	undo.add(func() { e.peerStreams.give(t.peer) })
	kind, delivers := e.kinds[req.Kind]
	if !delivers {
		refuse(wire.StatusUnknownKind, fmt.Sprintf("stream kind %s is not one this peer delivers", req.Kind), nil)
		return
	}
	if !allowed {
		// The same answer for a route that exists but is not this peer's as
		// for one that does not exist, listing only the peer's own routes,
		// so that a peer learns nothing of the routes of others.
		unknown := e.unknownRouteMessage(req.Route, t.peer)
		if known {
			o.StreamFailed(label, "not_allowed")
			o.StreamNotAllowed(label, e.peerLabel(t.peer))
			e.warnRefusal(log, "stream refused", "not_allowed", "allow", strings.Join(target.Allow, "+"))
			rec.refused("not_allowed", nil)
			_, _ = st.Write(wire.AppendResponse(nil, wire.Response{Status: wire.StatusUnknownRoute, Message: unknown})) // best effort: we close next
			_ = st.Close()
			return
		}
		// The peer reads "the peer's Target"; this side's own log says whose.
		refuse(wire.StatusUnknownRoute, unknown, fmt.Errorf("route %q is not in this side's %s (it has: %s)", routeName(req.Route), e.name("Target"), e.targetNames(t.peer)))
		return
	}
	if target.Kind != req.Kind {
		refuse(wire.StatusUnknownKind, fmt.Sprintf("route %q carries stream kind %s, not %s", routeName(req.Route), target.Kind, req.Kind), nil)
		return
	}
	// The addresses are the peer's word: refused when they are not ip:port
	// rather than passed on to the origin as an unknown source.
	client, server, err := preambleAddrs(req)
	if err != nil {
		refuse(wire.StatusBadPreamble, err.Error(), err)
		return
	}
	rec.delivers(target.Addr)
	f := &farSide{e: e, t: t, st: st, req: req, target: target, client: client, server: server,
		label: label, log: log, start: start, rec: rec, undo: &undo, refuse: refuse}
	kind.Handle(streamEnd{t.counted(st, 0)}, f)
	if !f.carried && !f.ended {
		st.Reset()
	}
}

// farSide is the engine's side of one admitted stream a kind's Handle delivers.
type farSide struct {
	e              *Engine
	t              *tunnel
	st             transport.Stream
	req            wire.Request
	target         Route
	client, server netip.AddrPort
	label          string
	log            *slog.Logger
	start          time.Time
	rec            *accessRecord
	undo           *undoList
	refuse         func(s wire.Status, msg string, err error)
	// carried is set by Carry, ended once the stream was refused or reset.
	carried, ended bool
}

var _ route.Far = (*farSide)(nil)

func (f *farSide) Request() wire.Request { return f.req }

// Dial dials the target route's origin, refusing the stream with the
// status of the failure.
func (f *farSide) Dial() (route.Conn, error) {
	origin, err := f.e.dialTarget(f.target, f.client, f.server, f.t.peer, f.log)
	if err != nil {
		status := wire.StatusOriginError
		var de *dialError
		switch {
		case errors.As(err, &de) && isTimeout(err):
			status = wire.StatusOriginTimeout
		case errors.As(err, &de) && check.IsRefused(err):
			status = wire.StatusOriginRefused
		}
		f.refuse(status, err.Error(), err)
		f.ended = true
		return nil, err
	}
	return origin, nil
}

// Accept answers the peer StatusOK.
func (f *farSide) Accept() error {
	if _, err := f.st.Write(wire.AppendResponse(nil, wire.Response{Status: wire.StatusOK})); err != nil {
		f.log.Info("stream aborted before reply", "err", err)
		f.rec.finished(0, 0, err)
		f.st.Reset()
		f.ended = true
		return err
	}
	return nil
}

func (f *farSide) IdleTimeout() time.Duration { return f.e.cfg.StreamIdleTimeout }

// Carry runs copy on a goroutine that then owns the stream's cleanups.
func (f *farSide) Carry(copy route.Copy) {
	f.carried = true
	f.e.carry(f.undo, func() {
		up, down, err := copy()
		f.e.inboundEnded(up, down, err, f.label, f.target.Addr, f.log, f.start, f.rec)
	})
}

// inboundEnded accounts a delivered stream whose copy ended.
func (e *Engine) inboundEnded(up, down int64, err error, label, target string, log *slog.Logger, start time.Time, rec *accessRecord) {
	o := e.obs
	err = e.namedIdle(err)
	o.StreamBytes(label, up, down)
	if benign(err) {
		rec.finished(up, down, nil)
	} else {
		rec.finished(up, down, err)
	}
	if errors.Is(err, route.ErrIdle) {
		o.StreamFailed(label, "idle")
		log.Info("stream closed: idle", "origin", target, "idle_timeout", e.cfg.StreamIdleTimeout, "bytes_up", up, "bytes_down", down, "duration", time.Since(start).Round(time.Millisecond))
		return
	}
	if err != nil && !benign(err) {
		o.StreamFailed(label, "aborted")
		log.Info("stream aborted", "origin", target, "bytes_up", up, "bytes_down", down, "duration", time.Since(start).Round(time.Millisecond), "err", err)
		return
	}
	log.Debug("stream closed", "origin", target, "bytes_up", up, "bytes_down", down, "duration", time.Since(start).Round(time.Millisecond))
}

// unknownRouteMessage is the answer to a peer that names a route it may
// not use: the same whether the route does not exist or is another peer's,
// listing only the routes this peer may use.
func (e *Engine) unknownRouteMessage(route, peer string) string {
	return fmt.Sprintf("route %q is not in the peer's %s (it has: %s)", routeName(route), e.name("Target"), e.targetNames(peer))
}

// answerRouteQuery tells the peer whether this side delivers route to it
// ('pqtunnel check' asks before any client does), with the answer a stream
// for that route would get, and dials nothing.
func (e *Engine) answerRouteQuery(st transport.Stream, t *tunnel, route string) {
	resp := wire.Response{Status: wire.StatusOK}
	if target, known := e.target(route); !known || !target.allows(t.peer) {
		resp = wire.Response{Status: wire.StatusUnknownRoute, Message: e.unknownRouteMessage(route, t.peer)}
	} else {
		resp.Message = e.targetHealth(routeName(route))
	}
	t.log.Debug("route query answered", "route", routeName(route), "status", resp.Status.String())
	_, _ = st.Write(wire.AppendResponse(nil, resp)) // best effort: the asker reads it or gives up
	_ = st.Close()
}

// target is the target route a peer's stream names. A target joined to a
// forward route of this side serves that route only.
func (e *Engine) target(name string) (Route, bool) {
	for _, r := range e.cfg.Target {
		if r.Name == name && !e.tls.joined(name) {
			return r, true
		}
	}
	return Route{}, false
}

// targetNames lists the target routes the peer of that name may use.
func (e *Engine) targetNames(peer string) string {
	var names []string
	for _, r := range e.cfg.Target {
		if r.allows(peer) && !e.tls.joined(r.Name) {
			names = append(names, routeName(r.Name))
		}
	}
	if len(names) == 0 {
		return "no targets"
	}
	return strings.Join(names, ", ")
}

// peerLabel is the peer's name as a metric label: only names this side's
// configuration defines, so that a peer cannot grow the series (in CA mode
// an unnamed rule names the peer by its certificate).
func (e *Engine) peerLabel(peer string) string {
	if e.cfg.TLS.Authenticator().Defines(peer) {
		return peer
	}
	return "other"
}

func errOr(err error, msg string) any {
	if err != nil {
		return err
	}
	return msg
}

// errOrMsg is err, or an error saying msg when err is nil.
func errOrMsg(err error, msg string) error {
	if err != nil {
		return err
	}
	return errors.New(msg)
}

// benign reports errors that mean "the other end went away", which are
// normal endings for a proxied connection, not failures worth a log line.
func benign(err error) bool {
	return errors.Is(err, net.ErrClosed)
}

// clientLabel is how logs name a client: its ip:port, or for a client of
// a Unix socket forward (whose own socket is unnamed) the socket it came
// through, "unix:/path".
func clientLabel(c net.Conn) string {
	if a, ok := c.LocalAddr().(*net.UnixAddr); ok {
		return "unix:" + a.Name
	}
	return c.RemoteAddr().String()
}

// wireAddr is an address as the preamble carries it: ip:port, or
// wire.AddrLocal for a Unix socket, whose path means nothing to the peer.
func wireAddr(a net.Addr) string {
	if _, ok := a.(*net.UnixAddr); ok {
		return wire.AddrLocal
	}
	return a.String()
}

// localAddrPort is a connection's address as preambleAddrs would return it:
// the ip:port of a TCP address, the zero AddrPort for a Unix socket.
func localAddrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// PP2TypePeer is the PROXY protocol v2 TLV type (in the range 0xE0-0xEF
// the specification leaves to applications) whose value is the name of the
// authenticated peer the connection came through: its name from PQT_PEERS
// or PQT_ALLOW, else its pin or certificate name. The addresses in the
// header are that peer's word; the TLV lets an origin tell whose.
const PP2TypePeer = 0xE0

// errBadAddress is wrapped by preambleAddrs for an address that is not
// ip:port or wire.AddrLocal.
var errBadAddress = errors.New("address is not ip:port")

// preambleAddrs parses the client's address and the one it connected to,
// which the peer wrote in the preamble. wire.AddrLocal (a client of a Unix
// socket forward) reads as the zero AddrPort. IPv4-mapped IPv6 addresses
// are unmapped so that an IPv4 client reads as one.
func preambleAddrs(req wire.Request) (client, server netip.AddrPort, err error) {
	parse := func(which, s string) (netip.AddrPort, error) {
		if s == wire.AddrLocal {
			return netip.AddrPort{}, nil
		}
		a, err := netip.ParseAddrPort(s)
		if err != nil {
			return a, fmt.Errorf("%s %w: %q", which, errBadAddress, s)
		}
		return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()), nil
	}
	if client, err = parse("client", req.Client); err != nil {
		return client, server, err
	}
	server, err = parse("server", req.Server)
	return client, server, err
}

// writeProxyHeader tells the origin the original client's address and the
// address it connected to, as the peer stated them in the stream preamble
// (or as this side saw them, for a local join without a peer), as a PROXY
// protocol v1 or v2 header; v2 also names the peer, if any, in a
// PP2TypePeer TLV. A client of a Unix socket (the zero AddrPort) is sent as
// UNKNOWN (v1) or LOCAL (v2); a TCP client delivered to a Unix target is
// sent as TCP4/TCP6 with the forward listener's address rather than as
// AF_UNIX.
func writeProxyHeader(origin net.Conn, version byte, client, server netip.AddrPort, peer string) error {
	var src, dst net.Addr
	if client.IsValid() && server.IsValid() {
		src, dst = net.TCPAddrFromAddrPort(client), net.TCPAddrFromAddrPort(server)
	}
	// Without addresses the header says UNKNOWN (v1) or LOCAL (v2).
	h := proxyproto.HeaderProxyFromAddrs(version, src, dst)
	if version == 2 && peer != "" {
		if err := h.SetTLVs([]proxyproto.TLV{{Type: PP2TypePeer, Value: []byte(peer)}}); err != nil {
			return fmt.Errorf("PROXY v2 peer TLV: %w", err)
		}
	}
	if _, err := h.WriteTo(origin); err != nil {
		return fmt.Errorf("write PROXY v%d header: %w", version, err)
	}
	return nil
}

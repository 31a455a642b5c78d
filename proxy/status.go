package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/defaults"
	"github.com/pqtunnel/pqtunnel/tlsroute"
	"github.com/pqtunnel/pqtunnel/transport"
)

// Status is a running engine at one moment: what /status.json serves and
// 'pqtunnel status' prints.
type Status struct {
	Mode  Mode      `json:"mode"`
	State string    `json:"state"` // serving or draining
	Time  time.Time `json:"time"`
	// HistoryInterval is the length in seconds of a TunnelDetail.History interval.
	HistoryInterval float64        `json:"traffic_interval_seconds"`
	Tunnels         []TunnelDetail `json:"tunnels"`
	Routes          []RouteStatus  `json:"routes"`
	Limits          Limits         `json:"limits"`
}

// TunnelDetail is one live tunnel connection. Bytes are stream payload as
// this side sees it, sent to the peer and received from it; on the side
// that opens streams, received includes the peer's few bytes of response
// to each stream.
type TunnelDetail struct {
	ID        uint64    `json:"id"`
	Peer      string    `json:"peer"` // its name, or its pin for a pinned identity
	PQAuth    bool      `json:"pq_auth"`
	Transport string    `json:"transport"`
	Group     string    `json:"group"`
	PQ        bool      `json:"post_quantum"`
	Sig       string    `json:"sig"`
	Remote    string    `json:"remote"`
	Since     time.Time `json:"since"`
	Uptime    float64   `json:"uptime_seconds"`
	// RTT is the transport's smoothed estimate in seconds; absent where the
	// transport has none (TCP).
	RTT     *float64 `json:"rtt_seconds,omitempty"`
	Streams int64    `json:"streams"`
	// StreamBound is how many streams the peer may open on this tunnel
	// connection at once, and OpenBound how many of this side's the peer
	// is taken to accept (lower once it refused one): over tcp both follow
	// PQT_MAX_CONN_MEMORY and the initial window the path's RTT gave
	// (see PQT_MAX_STREAMS). Zero is none.
	StreamBound   int   `json:"stream_bound"`
	OpenBound     int   `json:"open_bound"`
	BytesSent     int64 `json:"bytes_sent"`
	BytesReceived int64 `json:"bytes_received"`
	// History is the bytes carried both ways in each of the last (up to
	// 60) intervals of Status.HistoryInterval seconds, oldest first.
	History []int64 `json:"traffic_history"`
}

// RouteStatus is one configured route and the clients it carries now.
type RouteStatus struct {
	Kind string `json:"kind"` // forward or target
	Name string `json:"name"`
	// Scheme is "tls" for a tls:// route, empty for plain TCP.
	Scheme  string `json:"scheme,omitempty"`
	Addr    string `json:"addr"`
	Clients int64  `json:"clients"`
	// Local says the route joins the route of the same name on this side,
	// without a tunnel.
	Local bool `json:"local,omitempty"`
	// LastDial is the last origin dial of a target; nil before the first.
	LastDial *DialResult `json:"last_dial,omitempty"`
	// TLS is a tls:// route's handshakes; nil for plain TCP.
	TLS *TLSRouteStatus `json:"tls,omitempty"`
	// State is a target's origin as readiness sees it (TargetUp,
	// TargetFailing, TargetDown, TargetUnknown); empty for a forward route.
	State string `json:"state,omitempty"`
	// FailingSince is when a target's dials began to fail, with none
	// succeeding since; nil while it is not failing.
	FailingSince *time.Time `json:"failing_since,omitempty"`
}

// TLSRouteStatus counts a tls:// route's handshakes with standard clients
// (forward: terminated) or servers (target: originated) and shows the last.
type TLSRouteStatus struct {
	Handshakes int64 `json:"handshakes"`
	Refused    int64 `json:"refused"`
	// Last is the last completed handshake; nil before the first.
	Last *TLSHandshake `json:"last,omitempty"`
}

// TLSHandshake is what one tls:// route handshake negotiated.
type TLSHandshake struct {
	Time    time.Time `json:"time"`
	Group   string    `json:"group"`
	PQ      bool      `json:"post_quantum"`
	Sig     string    `json:"sig"`
	SNI     string    `json:"sni,omitempty"`
	ALPN    string    `json:"alpn,omitempty"`
	Resumed bool      `json:"resumed"`
	Client  string    `json:"client_cert,omitempty"`
}

// DialResult is how one origin dial ended.
type DialResult struct {
	Time    time.Time `json:"time"`
	OK      bool      `json:"ok"`
	Error   string    `json:"error,omitempty"`
	Seconds float64   `json:"seconds"`
	// Probe is true for the readiness probe's dial, false for a client's.
	Probe bool `json:"probe,omitempty"`
}

// Limits are the bounds the engine runs with, defaults applied, and how much
// of the process-wide ones is in use. A bound of -1 means none.
type Limits struct {
	Connections      int    `json:"connections,omitempty"` // dial side: tunnel connections kept
	MaxConnections   int    `json:"max_connections"`
	MaxStreams       int    `json:"max_streams"` // per tunnel connection
	MaxTotalStreams  int    `json:"max_total_streams"`
	TotalStreams     int    `json:"total_streams"` // streams in flight now, counted against MaxTotalStreams
	HandshakeTimeout string `json:"handshake_timeout"`
	DialTimeout      string `json:"dial_timeout"`
	IdleTimeout      string `json:"idle_timeout"`
	KeepAlive        string `json:"keepalive"`
	DrainTimeout     string `json:"drain_timeout"`
}

// Route kinds in RouteStatus.
const (
	KindForward = "forward"
	KindTarget  = "target"
)

// The server keeps each tunnel's traffic of the last two minutes, so that a
// status page or command shows it at once: bytes both ways per interval.
const (
	historyInterval = 2 * time.Second
	historyLen      = 60
)

// traffic counts a tunnel's stream payload, in atomics since every copy
// goroutine of the tunnel adds to them, and keeps its recent history.
type traffic struct {
	sent, received atomic.Int64

	mu      sync.Mutex
	ring    [historyLen]int64 // bytes both ways per interval; next is the oldest once full
	n, next int
	last    int64 // sent+received at the previous sample
}

// sample closes one history interval.
func (tr *traffic) sample() {
	total := tr.sent.Load() + tr.received.Load()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.ring[tr.next] = total - tr.last
	tr.last = total
	tr.next = (tr.next + 1) % historyLen
	tr.n = min(tr.n+1, historyLen)
}

// history returns the sampled intervals, oldest first.
func (tr *traffic) history() []int64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := make([]int64, 0, tr.n)
	for i := range tr.n {
		out = append(out, tr.ring[(tr.next-tr.n+i+historyLen)%historyLen])
	}
	return out
}

// routineSampleTraffic closes a history interval of every tunnel each
// historyInterval until ctx ends.
func (e *Engine) routineSampleTraffic(ctx context.Context) {
	defer e.loops.Done()
	tick := time.NewTicker(historyInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			for _, t := range e.tunnels.snapshot() {
				t.traffic.sample()
			}
		}
	}
}

// countedStream counts what crosses a tunnel stream into the tunnel's traffic.
type countedStream struct {
	transport.Stream
	t *traffic
}

func (c countedStream) Read(p []byte) (int, error) {
	n, err := c.Stream.Read(p)
	c.t.received.Add(int64(n))
	return n, err
}

func (c countedStream) Write(p []byte) (int, error) {
	n, err := c.Stream.Write(p)
	c.t.sent.Add(int64(n))
	return n, err
}

// counted returns st counting into t's traffic; early is what was already
// sent on it uncounted (the client bytes in the preamble's frame).
func (t *tunnel) counted(st transport.Stream, early int64) transport.Stream {
	t.traffic.sent.Add(early)
	return countedStream{Stream: st, t: &t.traffic}
}

// routeStats holds what the status shows per route; the zero value is ready.
type routeStats struct {
	mu sync.Mutex
	m  map[routeKey]*routeStat
}

type routeKey struct{ kind, name string }

type routeStat struct {
	clients    atomic.Int64
	tlsOK      atomic.Int64
	tlsRefused atomic.Int64
	mu         sync.Mutex
	last       *DialResult
	lastTLS    *TLSHandshake
	// failingSince is the first failed dial after the last one that
	// worked; zero while the last dial worked or before any.
	failingSince time.Time
}

func (rs *routeStats) get(kind, name string) *routeStat {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.m == nil {
		rs.m = map[routeKey]*routeStat{}
	}
	k := routeKey{kind, name}
	s := rs.m[k]
	if s == nil {
		s = &routeStat{}
		rs.m[k] = s
	}
	return s
}

// opened counts a client open on the route (as routeName shows it) and
// returns the function that counts it closed.
func (rs *routeStats) opened(kind, route string) func() {
	s := rs.get(kind, route)
	s.clients.Add(1)
	return func() { s.clients.Add(-1) }
}

// dialed records how the target route's last origin dial, begun at start,
// ended; probe says whether it was the readiness probe's.
func (rs *routeStats) dialed(route string, start time.Time, err error, probe bool) {
	r := &DialResult{Time: start, OK: err == nil, Seconds: time.Since(start).Seconds(), Probe: probe}
	if err != nil {
		r.Error = err.Error()
	}
	s := rs.get(KindTarget, route)
	s.mu.Lock()
	s.last = r
	switch {
	case err == nil:
		s.failingSince = time.Time{}
	case s.failingSince.IsZero():
		s.failingSince = start
	}
	s.mu.Unlock()
}

// tlsConnected records a completed handshake of the tls:// route.
func (rs *routeStats) tlsConnected(kind, route string, info tlsroute.Info) {
	s := rs.get(kind, route)
	s.tlsOK.Add(1)
	h := &TLSHandshake{Time: time.Now(), Group: hybridtls.GroupName(info.Group), PQ: info.PostQuantum(), Sig: info.Sig,
		SNI: info.SNI, ALPN: info.ALPN, Resumed: info.Resumed, Client: info.Client}
	s.mu.Lock()
	s.lastTLS = h
	s.mu.Unlock()
}

// tlsRefused counts a failed handshake of the tls:// route.
func (rs *routeStats) tlsRefused(kind, route string) { rs.get(kind, route).tlsRefused.Add(1) }

// status describes route r; local says it is joined on this side, and
// downAfter is how long a target may fail before it is down (negative:
// never).
func (rs *routeStats) status(kind string, r Route, local bool, now time.Time, downAfter time.Duration) RouteStatus {
	s := rs.get(kind, routeName(r.Name))
	out := RouteStatus{Kind: kind, Name: routeName(r.Name), Scheme: string(r.Scheme), Addr: r.Addr, Clients: s.clients.Load(), Local: local}
	if r.IsTLS() {
		out.TLS = &TLSRouteStatus{Handshakes: s.tlsOK.Load(), Refused: s.tlsRefused.Load()}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last != nil {
		last := *s.last
		out.LastDial = &last
	}
	if s.lastTLS != nil && out.TLS != nil {
		last := *s.lastTLS
		out.TLS.Last = &last
	}
	if kind == KindTarget {
		out.State = targetState(s.last, s.failingSince, now, downAfter)
		if !s.failingSince.IsZero() {
			since := s.failingSince
			out.FailingSince = &since
		}
	}
	return out
}

// Status describes the engine now: its tunnels, routes and limits.
func (e *Engine) Status() Status {
	now := time.Now()
	st := Status{Mode: e.cfg.Mode, State: "serving", Time: now, HistoryInterval: historyInterval.Seconds(), Tunnels: []TunnelDetail{}, Routes: []RouteStatus{}}
	if e.draining.Load() {
		st.State = "draining"
	}
	for _, t := range e.tunnels.snapshot() {
		info := t.s.Info()
		d := TunnelDetail{
			ID: t.id, Peer: info.Peer.Name, PQAuth: info.Peer.PQAuth, Transport: info.Transport,
			Group: hybridtls.GroupName(info.TLS.CurveID), PQ: hybridtls.IsPostQuantum(info.TLS.CurveID),
			Sig: info.Peer.Sig, Since: t.since, Uptime: now.Sub(t.since).Seconds(),
			Streams: t.active.Load(), BytesSent: t.traffic.sent.Load(), BytesReceived: t.traffic.received.Load(),
			History: t.traffic.history(), StreamBound: max(0, t.bound.Streams), OpenBound: max(0, t.outBound()),
		}
		if info.Remote != nil {
			d.Remote = info.Remote.String()
		}
		if ss, ok := transport.SessionStats(t.s); ok {
			rtt := ss.RTT.Seconds()
			d.RTT = &rtt
		}
		st.Tunnels = append(st.Tunnels, d)
	}
	for i, r := range e.cfg.Forward {
		if i < len(e.forwardLns) {
			r.Addr = e.forwardLns[i].Addr().String() // the port bound for port 0
		}
		st.Routes = append(st.Routes, e.routeStats.status(KindForward, r, e.tls.joined(r.Name), now, e.cfg.ReadyTargetDown))
	}
	for _, r := range e.cfg.Target {
		st.Routes = append(st.Routes, e.routeStats.status(KindTarget, r, e.tls.joined(r.Name), now, e.cfg.ReadyTargetDown))
	}
	st.Limits = e.limits()
	return st
}

func (e *Engine) limits() Limits {
	c, mc := e.cfg, e.cfg.Mux
	l := Limits{
		MaxConnections:   c.MaxConnections,
		MaxStreams:       mc.MaxStreams,
		MaxTotalStreams:  c.MaxTotalStreams,
		TotalStreams:     len(e.slots),
		HandshakeTimeout: orDefault(mc.HandshakeTimeout, defaults.HandshakeTimeout).String(),
		DialTimeout:      c.DialTimeout.String(),
		IdleTimeout:      orDefault(mc.IdleTimeout, max(defaults.IdleTimeout, 4*orDefault(mc.KeepAlive, defaults.KeepAlive))).String(),
		KeepAlive:        orDefault(mc.KeepAlive, defaults.KeepAlive).String(),
		DrainTimeout:     c.DrainTimeout.String(),
	}
	if l.MaxStreams == 0 {
		l.MaxStreams = defaults.MaxStreams
	}
	if c.Mode == ModeDial {
		l.Connections = c.Connections
	}
	l.MaxConnections = max(l.MaxConnections, -1)
	l.MaxTotalStreams = max(l.MaxTotalStreams, -1)
	return l
}

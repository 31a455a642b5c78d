package proxy

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/tlsroute"
	"github.com/pqtunnel/pqtunnel/transport"
)

// Metrics are the engine's Prometheus collectors, on a registry of their own.
type Metrics struct {
	reg               *prometheus.Registry
	tunnelsUp         *prometheus.GaugeVec
	handshakes        *prometheus.CounterVec
	handshakeFailures *prometheus.CounterVec
	handshakeSeconds  *prometheus.HistogramVec
	streamsOpened     *prometheus.CounterVec
	streamsActive     *prometheus.GaugeVec
	streamsFailed     *prometheus.CounterVec
	bytes             *prometheus.CounterVec
	originDial        *prometheus.HistogramVec
	reconnects        prometheus.Counter
	transportMoves    *prometheus.CounterVec
	extraTunnels      prometheus.Counter
	addressChanges    *prometheus.CounterVec
	notAllowed        *prometheus.CounterVec
	revoked           *prometheus.CounterVec
	tlsHandshakes     *prometheus.CounterVec
	tlsRefused        *prometheus.CounterVec
	tlsSeconds        *prometheus.HistogramVec

	// engines are the engines reporting into these metrics; the QUIC
	// collector reads their live tunnels. Several engines may share one
	// Metrics (one registry) because the collector is registered once.
	mu      sync.Mutex
	engines map[*Engine]struct{}

	disconnects *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them, with the Go runtime
// and process collectors, on a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		tunnelsUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pqtunnel_tunnels_up", Help: "Tunnel connections up, by transport, negotiated key-exchange group and the peer's signature scheme.",
		}, []string{"transport", "group", "sig"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_handshakes_total", Help: "Tunnel handshakes completed (TLS and session proof), by transport, group and the peer's signature scheme.",
		}, []string{"transport", "group", "sig"}),
		handshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_handshake_failures_total", Help: "Tunnel handshakes that failed or were refused, by reason (not_post_quantum, no_common_group, peer_not_allowed, proof_failed, timeout, busy, tls, dial).",
		}, []string{"reason"}),
		handshakeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pqtunnel_handshake_duration_seconds", Help: "Time to a verified tunnel connection.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"transport"}),
		streamsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_streams_opened_total", Help: "Streams opened, by route and direction (out: a local client sent through the tunnel; in: delivered to a target).",
		}, []string{"route", "direction"}),
		streamsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pqtunnel_streams_active", Help: "Streams open now, by route and direction.",
		}, []string{"route", "direction"}),
		streamsFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_streams_failed_total", Help: "Streams refused or aborted, by route and reason.",
		}, []string{"route", "reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_bytes_total", Help: "Payload bytes carried, by route and direction (up: client to origin; down: origin to client).",
		}, []string{"route", "direction"}),
		originDial: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pqtunnel_origin_dial_duration_seconds", Help: "Time to connect to an origin.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 3, 12),
		}, []string{"route"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pqtunnel_reconnects_total", Help: "Tunnel connections re-established by a dial side after one was lost.",
		}),
		transportMoves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_transport_moves_total", Help: "Tunnel connections a dial side on the auto transport replaced by one over the other transport, by from, to and reason (loss: QUIC lost packets at random; primary_works: QUIC works again).",
		}, []string{"from", "to", "reason"}),
		extraTunnels: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pqtunnel_extra_tunnels_opened_total", Help: "Tunnel connections a dial side opened beyond its configured connection count because the others neared their stream bound.",
		}),
		addressChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_tunnel_address_changes_total", Help: "Addresses a tunnel peer's name gained (change added) or lost (change removed) when looked up again.",
		}, []string{"change"}),
		notAllowed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_streams_not_allowed_total", Help: "Streams refused because the route's allow list (@) does not name the peer, by route and peer (a configured name, or other).",
		}, []string{"route", "peer"}),
		revoked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_tunnels_revoked_total", Help: "Live tunnel connections closed because a reload no longer accepts their peer, by peer (a name the configuration defined).",
		}, []string{"peer"}),
		tlsHandshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_tls_handshakes_total",
			Help: "TLS handshakes of tls:// routes with standard clients (side terminate) or servers (side originate), by route, group, post_quantum (false only under the prefer policy), the server's signature scheme (resumed for a resumed session), sni (the certificate name it matched, none, or other) and alpn.",
		}, []string{"route", "side", "group", "post_quantum", "sig", "sni", "alpn", "resumed"}),
		tlsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_tls_refused_total", Help: "TLS handshakes of tls:// routes that failed or were refused, by route, side and reason (not_post_quantum, no_common_group, bad_certificate, client_not_allowed, timeout, busy, tls).",
		}, []string{"route", "side", "reason"}),
		tlsSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pqtunnel_tls_handshake_duration_seconds", Help: "Time of a tls:// route's TLS handshake, by side.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
		}, []string{"side"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pqtunnel_tunnel_disconnects_total", Help: "Tunnel connections that ended, by transport and reason (peer_closed, keepalive_lost, idle_timeout, stateless_reset, connection_reset, tls_error, transport_error, shutdown, revoked, certificate_expired, moved, local_close, unknown).",
		}, []string{"transport", "reason"}),
	}
	m.engines = map[*Engine]struct{}{}
	m.reg.MustRegister(m.disconnects, m.tlsHandshakes, m.tlsRefused, m.tlsSeconds, m.notAllowed, m.revoked, m.tunnelsUp, m.handshakes, m.handshakeFailures, m.handshakeSeconds,
		m.streamsOpened, m.streamsActive, m.streamsFailed, m.bytes, m.originDial, m.reconnects, m.transportMoves, m.extraTunnels, m.addressChanges,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&quicCollector{
			m:    m,
			rtt:  prometheus.NewDesc("pqtunnel_quic_rtt_seconds", "Smoothed RTT of a QUIC tunnel connection.", []string{"tunnel"}, nil),
			lost: prometheus.NewDesc("pqtunnel_quic_packets_lost_total", "Packets lost on a QUIC tunnel connection.", []string{"tunnel"}, nil),
		})
	return m
}

// Registry is where the collectors are registered.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// HandshakeFailed counts a failed or refused tunnel handshake.
func (m *Metrics) HandshakeFailed(reason string) { m.handshakeFailures.WithLabelValues(reason).Inc() }

// TunnelUp counts a tunnel connection up and its handshake.
func (m *Metrics) TunnelUp(info transport.Info) {
	g := hybridtls.GroupName(info.TLS.CurveID)
	m.tunnelsUp.WithLabelValues(info.Transport, g, info.Peer.Sig).Inc()
	m.handshakes.WithLabelValues(info.Transport, g, info.Peer.Sig).Inc()
	m.handshakeSeconds.WithLabelValues(info.Transport).Observe(info.Handshake.Seconds())
}

// TunnelDown counts a tunnel connection that ended, and why.
func (m *Metrics) TunnelDown(info transport.Info, reason string) {
	m.tunnelsUp.WithLabelValues(info.Transport, hybridtls.GroupName(info.TLS.CurveID), info.Peer.Sig).Dec()
	m.disconnects.WithLabelValues(info.Transport, reason).Inc()
}

// TunnelRevoked counts a live tunnel closed because its peer is no longer accepted.
func (m *Metrics) TunnelRevoked(peer string) { m.revoked.WithLabelValues(peer).Inc() }

// Reconnected counts a dial side's tunnel re-established after a loss.
func (m *Metrics) Reconnected() { m.reconnects.Inc() }

// ExtraTunnelOpened counts a dial side's connection opened for load.
func (m *Metrics) ExtraTunnelOpened() { m.extraTunnels.Inc() }

// TunnelAddressesChanged counts the addresses a Tunnel name gained and lost.
func (m *Metrics) TunnelAddressesChanged(added, removed int) {
	m.addressChanges.WithLabelValues("added").Add(float64(added))
	m.addressChanges.WithLabelValues("removed").Add(float64(removed))
}

// TransportMoved counts a tunnel connection moved to another transport.
func (m *Metrics) TransportMoved(from, to, reason string) {
	m.transportMoves.WithLabelValues(from, to, reason).Inc()
}

// StreamOpened counts a stream opened and active.
func (m *Metrics) StreamOpened(route, direction string) {
	m.streamsOpened.WithLabelValues(route, direction).Inc()
	m.streamsActive.WithLabelValues(route, direction).Inc()
}

// StreamClosed counts a stream no longer active.
func (m *Metrics) StreamClosed(route, direction string) {
	m.streamsActive.WithLabelValues(route, direction).Dec()
}

// StreamFailed counts a stream refused or aborted.
func (m *Metrics) StreamFailed(route, reason string) {
	m.streamsFailed.WithLabelValues(route, reason).Inc()
}

// StreamNotAllowed counts a stream the route's allow list refused.
func (m *Metrics) StreamNotAllowed(route, peer string) {
	m.notAllowed.WithLabelValues(route, peer).Inc()
}

// StreamBytes counts the payload a stream carried each way.
func (m *Metrics) StreamBytes(route string, up, down int64) {
	m.bytes.WithLabelValues(route, "up").Add(float64(up))
	m.bytes.WithLabelValues(route, "down").Add(float64(down))
}

// OriginDialed observes how long an origin dial took.
func (m *Metrics) OriginDialed(route string, took time.Duration) {
	m.originDial.WithLabelValues(route).Observe(took.Seconds())
}

// TLSHandshake counts a completed tls:// route handshake and its duration.
func (m *Metrics) TLSHandshake(route, side string, info tlsroute.Info, sni string) {
	m.tlsHandshakes.WithLabelValues(route, side, hybridtls.GroupName(info.Group), strconv.FormatBool(info.PostQuantum()), info.Sig, sni, info.ALPN, strconv.FormatBool(info.Resumed)).Inc()
	m.tlsSeconds.WithLabelValues(side).Observe(info.Handshake.Seconds())
}

// TLSRefused counts a failed or refused tls:// route handshake.
func (m *Metrics) TLSRefused(route, side, reason string) {
	m.tlsRefused.WithLabelValues(route, side, reason).Inc()
}

func (m *Metrics) attach(e *Engine) {
	m.mu.Lock()
	m.engines[e] = struct{}{}
	m.mu.Unlock()
}

func (m *Metrics) detach(e *Engine) {
	m.mu.Lock()
	delete(m.engines, e)
	m.mu.Unlock()
}

func (m *Metrics) attached() []*Engine {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Engine, 0, len(m.engines))
	for e := range m.engines {
		out = append(out, e)
	}
	return out
}

// quicCollector reports RTT and loss of the live QUIC tunnel connections of
// every attached engine. Tunnel ids are unique in the process, so the
// engines' series never collide.
type quicCollector struct {
	m         *Metrics
	rtt, lost *prometheus.Desc
}

func (c *quicCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.rtt; ch <- c.lost }

func (c *quicCollector) Collect(ch chan<- prometheus.Metric) {
	for _, e := range c.m.attached() {
		for _, t := range e.tunnels.snapshot() {
			st, ok := transport.SessionStats(t.s)
			if !ok {
				continue
			}
			id := t.label()
			ch <- prometheus.MustNewConstMetric(c.rtt, prometheus.GaugeValue, st.RTT.Seconds(), id)
			ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(st.PacketsLost), id)
		}
	}
}

// TunnelStatus is one tunnel connection as /readyz shows it.
type TunnelStatus struct {
	ID        uint64    `json:"id"`
	Transport string    `json:"transport"`
	Group     string    `json:"group"`
	PQ        bool      `json:"post_quantum"`
	TLS       string    `json:"tls"`
	Peer      string    `json:"peer"`
	PQAuth    bool      `json:"pq_auth"`
	Sig       string    `json:"sig"`
	Remote    string    `json:"remote"`
	Since     time.Time `json:"since"`
	Streams   int64     `json:"streams"`
}

// Readiness is the /readyz body.
type Readiness struct {
	Ready   bool           `json:"ready"`
	Mode    Mode           `json:"mode"`
	State   string         `json:"state"`
	Tunnels []TunnelStatus `json:"tunnels"`
	// Targets are the target routes and their origins' state.
	Targets []TargetStatus `json:"targets"`
}

// Readiness reports readiness: a dial side is ready with at least one tunnel
// connection up; a listen side once its listeners are up. Neither is ready
// while draining, nor while a target route is down (its origin dials have
// failed for ReadyTargetDown).
func (e *Engine) Readiness() Readiness {
	e.kickProbe() // what it finds shows in the next answer
	st := Readiness{Mode: e.cfg.Mode, State: "serving", Tunnels: []TunnelStatus{}, Targets: e.targetStatuses()}
	for _, t := range e.tunnels.snapshot() {
		info := t.s.Info()
		st.Tunnels = append(st.Tunnels, TunnelStatus{
			ID: t.id, Transport: info.Transport, Group: hybridtls.GroupName(info.TLS.CurveID),
			PQ: hybridtls.IsPostQuantum(info.TLS.CurveID), TLS: "1.3", Peer: info.Peer.Name, PQAuth: info.Peer.PQAuth, Sig: info.Peer.Sig,
			Remote: info.Remote.String(), Since: t.since, Streams: t.active.Load(),
		})
	}
	switch {
	case e.draining.Load():
		st.State = "draining"
	case e.cfg.Mode == ModeListen || e.cfg.Mode == ModeLocal:
		st.Ready = true
	default:
		st.Ready = len(st.Tunnels) > 0
	}
	for _, ts := range st.Targets {
		if ts.State == TargetDown {
			st.Ready = false
		}
	}
	return st
}

// Handler serves /metrics, /healthz, /readyz, /status and /status.json.
func (e *Engine) Handler() http.Handler {
	h := http.NewServeMux()
	h.Handle("GET /metrics", promhttp.HandlerFor(e.metrics.reg, promhttp.HandlerOpts{}))
	h.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n")) // the client went away
	})
	h.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		st := e.Readiness()
		w.Header().Set("Content-Type", "application/json")
		if !st.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st) // the client went away
	})
	e.statusRoutes(h)
	return h
}

// Package defaults is the one table of pqtunnel's default settings. The
// libraries' zero values and the environment's envDefault tags both come
// from it (a test in internal/config checks the tags against it), so a
// library user and a user of the binary get the same tunnel.
package defaults

import "time"

// Tunnel and transport.
const (
	// Transport serves QUIC and TCP on a listen side and makes a dial side
	// fall back from QUIC to TCP.
	Transport = "auto"
	// Connections is how many tunnel connections a dial side keeps: two
	// survive the loss of one.
	Connections = 2
	// FallbackTimeout is how long an auto dial side waits for QUIC before TCP.
	FallbackTimeout = 3 * time.Second
	// QUICRetry is how often an auto dial side on TCP tries QUIC again.
	QUICRetry = 30 * time.Second
	// FallbackLoss is the percent of packets lost at random at which an
	// auto dial side moves from QUIC to TCP: on the WAN test bed the emulator's
	// 0.1 % loss, which QUIC counted as 0.07–0.11 %, held QUIC to 0.23×
	// direct TCP at 20 ms, where the TCP transport (BBR) kept 0.81×.
	// QUIC's own congestion losses on a clean path come in bursts, which the
	// loss watch tells apart (transport/losswatch.go).
	FallbackLoss = 0.05
	// ResolveInterval is how often a dial side looks up the names in
	// PQT_TUNNEL again, following relays that come and go behind one name
	// (a Kubernetes headless Service) within half a minute.
	ResolveInterval = 30 * time.Second
	// SurplusIdle is how long a tunnel connection a dial side opened beyond
	// PQT_CONNECTIONS, for load, may carry nothing before it is closed: long
	// enough that a burst that comes back finds it still up.
	SurplusIdle = 30 * time.Second
)

// Post-quantum policy.
const (
	// PQ offers and accepts only hybrid post-quantum key exchange.
	PQ = "strict"
	// Groups are the hybrid groups offered and accepted.
	Groups = "X25519MLKEM768,SecP256r1MLKEM768,SecP384r1MLKEM1024"
	// Auth accepts CA-mode peers whose chains are classical or mixed,
	// logged as such; pinned identities are ML-DSA whatever it says.
	Auth = "any"
)

// Timeouts.
const (
	// HandshakeTimeout bounds a tunnel handshake including the ML-DSA proof.
	HandshakeTimeout = 10 * time.Second
	// DialTimeout bounds dialling an origin.
	DialTimeout = 5 * time.Second
	// KeepAlive is the interval of tunnel keep-alives.
	KeepAlive = 2 * time.Second
	// IdleTimeout ends a tunnel connection whose peer is silent this long:
	// four keep-alives, so a dead peer is noticed within seconds.
	IdleTimeout = 8 * time.Second
	// KeepAliveTimeout ends a tunnel connection whose keep-alive probes go
	// unanswered this long, even while the peer's packets still arrive (a
	// path dead one way), so that clients move to a live tunnel or are
	// refused within seconds.
	KeepAliveTimeout = 3 * time.Second
	// DrainTimeout bounds how long open streams may finish at shutdown.
	DrainTimeout = 30 * time.Second
	// ReadyTargetDown is how long a target's origin dials may fail before
	// the side reports not ready: long enough to ride out an origin's
	// restart, short enough that Kubernetes stops sending traffic soon.
	ReadyTargetDown = 10 * time.Second
)

// Limits.
const (
	// MaxStreams bounds the streams a peer may have open on one tunnel connection.
	MaxStreams = 4096
	// MaxTotalStreams bounds the streams one process carries at once.
	MaxTotalStreams = 65536
	// MaxHandshakes bounds the tunnel handshakes a listen side runs at once.
	MaxHandshakes = 64
	// MaxConnections bounds the tunnel connections a listen side accepts,
	// and those a dial side opens as streams fill the ones it has.
	MaxConnections = 256
	// StreamWindow is the per-stream receive window in bytes, the most a
	// stream's window grows to: 200 Mbit/s × 200 ms is 5 MB in flight,
	// the path's queue adds to it, and over tcp yamux counts what waits
	// unsent in the sender's socket buffer too (Linux grows that up to
	// net.ipv4.tcp_wmem's maximum, 4 MiB by default). 4 MiB held one
	// stream at 0.4× direct TCP at 80 ms.
	StreamWindow = 16 << 20
	// MaxConnMemory bounds, in bytes, the receive windows one tunnel
	// connection grants its peer, so one peer pushing into a slow origin
	// cannot make this side buffer more. Over tcp every stream holds at
	// least its initial window (yamux's 256 KiB at the default
	// MaxStreams on a short path, up to 4 MiB on a long one), so the bound
	// also caps streams per connection: 256 MiB leaves room for 511 each
	// way on a short path, 31 on a long one (64 MiB would leave 127 on a
	// short path, fewer than an ordinary pool of idle connections).
	MaxConnMemory = 256 << 20
	// MaxClientsPerIP zero means ClientsPerIPShare of MaxTotalStreams.
	MaxClientsPerIP = 0
	// ClientsPerIPShare is the percentage of MaxTotalStreams one client
	// source may hold on forward routes when MaxClientsPerIP is zero: a
	// quarter, so that four visitors are needed to fill the process, while
	// no ordinary client pool (a sidecar's, all from loopback) comes near
	// 16,384 connections.
	ClientsPerIPShare = 25
	// PeerShare is the percentage of MaxConnections and MaxTotalStreams one
	// peer may hold when several are accepted: half leaves the other half
	// for the rest, whichever peer misbehaves.
	PeerShare = 50
)

// UnixSocketMode is the mode of a unix:// forward route's socket: its
// owner and group may connect, others not.
const UnixSocketMode = 0o660

// Logging.
const (
	LogLevel  = "info"
	LogFormat = "text"
	// Control serves the control socket at a path derived from the
	// environment, so that 'pqtunnel status' works without PQT_METRICS.
	Control = "auto"
	// AccessLog is off: a busy side would otherwise log a line per client
	// connection; PQT_ACCESS_LOG=on turns the per-connection lines on.
	AccessLog = "off"
)

// Package config is pqtunnel's environment contract: the only place the
// PQT_* variable names appear. Parse reads the environment once into typed
// values for the libraries, names the variable in every error, refuses
// PQT_* names it does not know, and maps the libraries' typed errors back to
// the variables that caused them.
package config

import (
	"fmt"
	"reflect"
	"time"
)

// Vars is the environment as pqtunnel reads it: one field per variable.
// The env tags name the variables, the envDefault tags give the defaults
// (which must agree with package defaults, as a test checks), and the help
// tags are what 'pqtunnel help' prints, so the three cannot drift.
type Vars struct {
	Mode      string `env:"PQT_MODE" help:"listen or dial (required unless every route joins locally). Only says who opens the tunnel connection."`
	Tunnel    string `env:"PQT_TUNNEL" help:"listen: the address to accept tunnel connections on (UDP and TCP); dial: the peer's host:port, or several comma-separated."`
	Forward   string `env:"PQT_FORWARD" help:"Where this side accepts plain TCP to send through the tunnel: host:port, or name=host:port,... for named routes; host:port@peer+peer carries the route only over tunnels of those peers (names from PQT_PEERS or PQT_ALLOW). tls://host:port terminates TLS 1.3 from standard clients (browsers, curl) with PQT_TLS_CERT. unix:///path listens on a Unix stream socket at that path (PQT_UNIX_MODE, PQT_UNIX_GROUP; a stale socket file is replaced, any other file refused; removed on exit). A route with a PQT_TARGET route of the same name, one of them tls://, joins it on this side without a tunnel."`
	Target    string `env:"PQT_TARGET" help:"Where streams from the tunnel are delivered: host:port, or name=host:port,... Only these addresses are ever dialled; host:port@peer+peer accepts streams for the route only from those peers. tls://host:port dials TLS 1.3 to a standard server, verified against PQT_TLS_CA or the system roots. unix:///path connects to a Unix stream socket."`
	Transport string `env:"PQT_TRANSPORT" envDefault:"auto" help:"quic, tcp (TLS 1.3 over TCP with yamux) or auto: a listen side serves both on one port; a dial side tries QUIC and falls back to TCP."`

	Connections int `env:"PQT_CONNECTIONS" envDefault:"2" help:"Tunnel connections a dial side keeps, spread over the PQT_TUNNEL peers; two survive the loss of one."`

	PQ     string `env:"PQT_PQ" envDefault:"strict" help:"strict: only hybrid post-quantum key exchange; prefer: hybrid first, classical X25519 accepted and logged at WARN."`
	Groups string `env:"PQT_GROUPS" envDefault:"X25519MLKEM768,SecP256r1MLKEM768,SecP384r1MLKEM1024" help:"Key-exchange groups offered and accepted, the same on both transports; Go applies its own order among them, so list fewer to force one. MLKEM1024 is pure post-quantum (no classical half)."`

	Identity    string `env:"PQT_IDENTITY" help:"Path of this side's identity file (from 'pqtunnel keygen'); mode 0600."`
	IdentityPEM string `env:"PQT_IDENTITY_PEM" help:"This side's identity as PEM text, instead of PQT_IDENTITY."`
	Peers       string `env:"PQT_PEERS" help:"Pins of the peers this side accepts (from 'pqtunnel pin FILE'), comma-separated, each optionally named (app1=pqt1_...); an entry starting with / or . is a file of pins, one per line (optionally 'app1 pqt1_...'), re-read on SIGHUP, where removing a pin closes that peer's live tunnels and an empty file accepts nobody."`
	Cert        string `env:"PQT_CERT" help:"CA mode: this side's certificate chain (PEM file)."`
	Key         string `env:"PQT_KEY" help:"CA mode: this side's private key (PEM file)."`
	CA          string `env:"PQT_CA" help:"CA mode: the CA bundle that signs peer certificates (PEM file)."`
	Allow       string `env:"PQT_ALLOW" help:"CA mode: peers accepted by certificate name: dns:NAME, uri:URI, cn:NAME, comma-separated, each optionally named (web=dns:NAME) for @ lists in routes; an entry starting with / or . is a file of rules (one or more per line), re-read on SIGHUP, where a peer no longer matching has its live tunnels closed and an empty file accepts nobody; empty accepts any the CA signed."`
	ServerName  string `env:"PQT_SERVER_NAME" help:"CA mode: the name a dial side verifies in the peer's certificate; default the host of PQT_TUNNEL."`
	Profile     string `env:"PQT_PROFILE" help:"cnsa2: the CNSA 2.0 profile in one switch: key exchange MLKEM1024 only, ML-DSA-87 authentication (identities from 'pqtunnel keygen --profile cnsa2', CA chains ML-DSA-87 end to end), PQT_KEYLOG refused. Off when empty."`
	Auth        string `env:"PQT_AUTH" envDefault:"any" help:"CA mode: pq refuses a peer whose certificate chain is not ML-DSA end to end (leaf key and every signature up to PQT_CA); any accepts classical and mixed chains, logged pq_auth=false with the reason."`

	TLSCert           string        `env:"PQT_TLS_CERT" help:"tls:// forward routes: the certificate chains (PEM files) served to standard TLS clients, comma-separated, paired by position with PQT_TLS_KEY; e.g. an ECDSA one for browsers and an ML-DSA one, which clients that offer ML-DSA get. The client's server name (SNI) and signature algorithms choose among them. Re-read on SIGHUP."`
	TLSKey            string        `env:"PQT_TLS_KEY" help:"tls:// forward routes: the private keys (PEM files, mode 0600) of PQT_TLS_CERT, in the same order."`
	TLSClientCA       string        `env:"PQT_TLS_CLIENT_CA" help:"tls:// forward routes: CA bundle (PEM file); when set, clients must present a certificate it signed. Re-read on SIGHUP."`
	TLSAllow          string        `env:"PQT_TLS_ALLOW" help:"tls:// forward routes with PQT_TLS_CLIENT_CA: client certificates accepted by name, dns:NAME, uri:URI, cn:NAME, comma-separated; empty accepts any the CA signed."`
	TLSCA             string        `env:"PQT_TLS_CA" help:"tls:// target routes: CA bundle (PEM file) that server certificates must chain to; default the system's roots. Re-read on SIGHUP."`
	TLSALPN           string        `env:"PQT_TLS_ALPN" help:"tls:// routes: application protocols (ALPN) offered or accepted, per route: web=h2+http/1.1,api=http/1.1 ('+' between protocols, ',' between routes; h2+http/1.1 alone for the unnamed route). None when empty."`
	TLSServerName     string        `env:"PQT_TLS_SERVER_NAME" help:"tls:// target routes: the name the server's certificate must carry, also sent as SNI, per route: api=api.example.com; default the host of the route's address."`
	HandshakeTimeout  time.Duration `env:"PQT_HANDSHAKE_TIMEOUT" envDefault:"10s" help:"Bound on a tunnel handshake including the session proof, and on a tls:// route's TLS handshake."`
	DialTimeout       time.Duration `env:"PQT_DIAL_TIMEOUT" envDefault:"5s" help:"Bound on dialling an origin."`
	IdleTimeout       time.Duration `env:"PQT_IDLE_TIMEOUT" envDefault:"8s" help:"A tunnel connection whose peer is silent this long is dead."`
	KeepAlive         time.Duration `env:"PQT_KEEPALIVE" envDefault:"2s" help:"Interval of tunnel keep-alives."`
	KeepAliveTimeout  time.Duration `env:"PQT_KEEPALIVE_TIMEOUT" envDefault:"3s" help:"A tunnel connection whose keep-alive probes go unanswered this long is closed (reason keepalive_lost), also while the peer's packets still arrive (a path dead one way); probes go out every PQT_KEEPALIVE or a quarter of this, whichever is shorter, and a slow but live path keeps answering. 0 turns the probes off, leaving PQT_IDLE_TIMEOUT."`
	TCPCongestion     string        `env:"PQT_TCP_CONGESTION" help:"Congestion control of the tunnel's TCP connections (tcp transport, Linux), such as bbr, which keeps a lossy long path fast where cubic collapses; it must be one the kernel offers (/proc/sys/net/ipv4/tcp_available_congestion_control). Empty: bbr where the kernel lets this process set it (loaded, and for a process without CAP_NET_ADMIN listed in net.ipv4.tcp_allowed_congestion_control), else the kernel's default (net.ipv4.tcp_congestion_control)."`
	FallbackTimeout   time.Duration `env:"PQT_FALLBACK_TIMEOUT" envDefault:"3s" help:"With PQT_TRANSPORT=auto: how long a dial side waits for a QUIC handshake before it uses TCP."`
	ResolveInterval   time.Duration `env:"PQT_RESOLVE_INTERVAL" envDefault:"30s" help:"How often a dial side looks up the host names in PQT_TUNNEL again: PQT_CONNECTIONS are spread over every address a name has (at least one each), tunnels are added for new addresses and those of vanished ones drained."`
	QUICRetry         time.Duration `env:"PQT_QUIC_RETRY" envDefault:"30s" help:"With PQT_TRANSPORT=auto: how often a dial side that fell back to TCP tries QUIC again, moving back when it connects and loses less than PQT_FALLBACK_LOSS of a one-second burst of 1000 probes."`
	FallbackLoss      float64       `env:"PQT_FALLBACK_LOSS" envDefault:"0.05" help:"With PQT_TRANSPORT=auto: percent of its packets a dial side's QUIC tunnel may lose at random, over 10 s in either direction, before it moves to TCP, whose congestion control (BBR) keeps its rate under loss where QUIC's loss-based one collapses. Congestion losses, which come in bursts, do not count. 0 turns the move off."`
	MaxStreams        int           `env:"PQT_MAX_STREAMS" envDefault:"4096" help:"Streams the peer may have open at once on one tunnel connection. Set it the same on both sides: each side starts from its own as the peer's; over tcp a dial side lowers that when the peer refuses a stream. Over tcp fewer streams give each a larger initial window (the largest power of two from 256KiB whose windows for these streams take at most half of PQT_MAX_CONN_MEMORY): 63 gives 2MiB and 31 gives 4MiB. On Linux a longer path gives larger windows too, sized by the RTT the handshake measured, and fewer streams per connection, down to 31: 1MiB and 127 streams at 20 ms, 4MiB and 31 from 42 ms at the defaults."`
	MaxTotalStreams   int           `env:"PQT_MAX_TOTAL_STREAMS" envDefault:"65536" help:"Streams this process carries at once over all tunnel connections; past it new clients and streams are refused."`
	MaxHandshakes     int           `env:"PQT_MAX_HANDSHAKES" envDefault:"64" help:"Tunnel handshakes a listen side runs at once, and TLS handshakes the tls:// forward routes run at once; more are refused until one finishes."`
	MaxConnections    int           `env:"PQT_MAX_CONNECTIONS" envDefault:"256" help:"Tunnel connections a side holds at once: a listen side accepts at most this many; a dial side opens more than PQT_CONNECTIONS, up to this many, while every one nears its stream bound (PQT_MAX_STREAMS, over tcp also PQT_MAX_CONN_MEMORY), and closes the extra ones once idle."`
	MaxConnMemory     ByteSize      `env:"PQT_MAX_CONN_MEMORY" envDefault:"256MiB" help:"Memory one tunnel connection may hold for data its peer sent and the origin has not read (receive windows); a faster peer is slowed by flow control. Over tcp it also caps the streams open at once on that connection at about this/(2 × a stream's initial window) each way (511 at 256MiB with the 256KiB windows of the default PQT_MAX_STREAMS on a path under 5 ms, 31 from 42 ms). Units KiB, MiB, GiB; at least 1MiB."`
	MaxClientsPerIP   int           `env:"PQT_MAX_CLIENTS_PER_IP" envDefault:"0" help:"Clients one source address (an IPv4 address, or an IPv6 /64) may have open at once on the forward routes; more are refused. 0: a quarter of PQT_MAX_TOTAL_STREAMS (16384 by default); -1: no bound. A sidecar's clients all come from loopback and share one count."`
	MaxPeerShare      int           `env:"PQT_MAX_PEER_SHARE" envDefault:"50" help:"Percent of PQT_MAX_CONNECTIONS and of PQT_MAX_TOTAL_STREAMS one peer may hold (the tunnel connections and the streams it opens) when more than one peer is accepted, so that one peer cannot lock the others out; 1 to 100. With one peer accepted it may hold everything."`
	StreamIdleTimeout time.Duration `env:"PQT_STREAM_IDLE_TIMEOUT" help:"Close a stream on which no byte moved in either direction for this long. Off when empty or 0: database pools legitimately idle for hours."`
	DrainTimeout      time.Duration `env:"PQT_DRAIN_TIMEOUT" envDefault:"30s" help:"On SIGTERM/SIGINT, how long open streams may finish before they are closed."`
	ReadyTargetDown   time.Duration `env:"PQT_READY_TARGET_DOWN" envDefault:"10s" help:"A side with PQT_TARGET is not ready (/readyz 503) while a target's origin dials have failed for this long; while /readyz is asked, an idle target is probed with a TCP connect at most every half of it (and every 5s). 0 turns the probe and this check off."`

	Metrics       string `env:"PQT_METRICS" help:"Address of the HTTP server for /metrics, /healthz, /readyz and /status (pqtunnel status reads it); a bare port binds 127.0.0.1. Off when empty."`
	Control       string `env:"PQT_CONTROL" envDefault:"auto" help:"Unix socket serving /status.json, /readyz and the rest of the metrics server's pages to 'pqtunnel status' (mode 0600): a path; auto, a path in this user's runtime directory derived from PQT_MODE, PQT_TUNNEL, PQT_FORWARD and PQT_TARGET, which status run with the same environment finds; or off."`
	UnixMode      string `env:"PQT_UNIX_MODE" envDefault:"0660" help:"Octal mode of the sockets unix:// forward routes create; 0660 lets the owner and group connect."`
	UnixGroup     string `env:"PQT_UNIX_GROUP" help:"Group (name or number) given to the sockets unix:// forward routes create; this process must be a member (or root). Empty keeps the process's group."`
	ProxyProtocol string `env:"PQT_PROXY_PROTOCOL" help:"v1 or v2: send a PROXY protocol header with the client address the peer states to each origin this side dials (a client of a unix:// forward route is sent as UNKNOWN/LOCAL); a stream whose addresses are neither ip:port nor local is refused; v2 names the peer in TLV 0xE0. Off when empty."`

	AccessLog string `env:"PQT_ACCESS_LOG" envDefault:"off" help:"on: log one INFO line per proxied connection when it ends (direction, route, client, peer, tunnel, bytes each way, duration, end=closed|aborted|refused with the reason), never rate-limited; off: only refusals and aborts are logged."`

	KeyLog string `env:"PQT_KEYLOG" help:"File to append TLS secrets to in the NSS key log format (both transports), so Wireshark or tshark can decrypt a capture and show the signature algorithm. Debugging only: anyone with the file can decrypt the tunnel; each tunnel logs a WARN while it is on. Off when empty."`

	LogLevel  string `env:"PQT_LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error."`
	LogFormat string `env:"PQT_LOG_FORMAT" envDefault:"text" help:"text (coloured on a terminal) or json."`
}

// Variable describes one environment variable for 'pqtunnel help' and the README.
type Variable struct {
	Name    string // PQT_...
	Field   string // the Vars field it fills
	Default string // "" when it has none
	Help    string
}

// Variables lists every variable in the order of Vars.
func Variables() []Variable {
	t := reflect.TypeFor[Vars]()
	out := make([]Variable, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		out[i] = Variable{Name: f.Tag.Get("env"), Field: f.Name, Default: f.Tag.Get("envDefault"), Help: f.Tag.Get("help")}
	}
	return out
}

// Name is the variable that fills the Vars field of that name, for messages
// outside this package that tell the user which setting to change. An
// unknown field is a programming error.
func Name(field string) string {
	for _, v := range Variables() {
		if v.Field == field {
			return v.Name
		}
	}
	panic(fmt.Sprintf("config: no variable fills field %q", field))
}

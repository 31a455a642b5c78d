package main

import (
	"crypto/mldsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/proxy"

	"github.com/pqtunnel/pqtunnel/transport"
)

// Config is pqtunnel's whole configuration, read from the environment.
// The help tags are what 'pqtunnel help' prints, so the two cannot drift.
type Config struct {
	Mode      string `env:"PQT_MODE" help:"listen or dial (required). Only says who opens the tunnel connection."`
	Tunnel    string `env:"PQT_TUNNEL" help:"listen: the address to accept tunnel connections on (UDP and TCP); dial: the peer's host:port, or several comma-separated."`
	Forward   string `env:"PQT_FORWARD" help:"Where this side accepts plain TCP to send through the tunnel: host:port, or name=host:port,... for named routes."`
	Target    string `env:"PQT_TARGET" help:"Where streams from the tunnel are delivered: host:port, or name=host:port,... Only these addresses are ever dialled."`
	Transport string `env:"PQT_TRANSPORT" envDefault:"auto" help:"quic, tcp (TLS 1.3 over TCP with yamux) or auto: a listen side serves both on one port; a dial side tries QUIC and falls back to TCP."`

	Connections int `env:"PQT_CONNECTIONS" envDefault:"2" help:"Tunnel connections a dial side keeps, spread over the PQT_TUNNEL peers; two survive the loss of one."`

	PQ     string `env:"PQT_PQ" envDefault:"strict" help:"strict: only hybrid post-quantum key exchange; prefer: hybrid first, classical X25519 accepted and logged at WARN."`
	Groups string `env:"PQT_GROUPS" envDefault:"X25519MLKEM768,SecP256r1MLKEM768,SecP384r1MLKEM1024" help:"Key-exchange groups offered and accepted, the same on both transports; Go applies its own order among them, so list fewer to force one. MLKEM1024 is pure post-quantum (no classical half)."`

	Identity    string `env:"PQT_IDENTITY" help:"Path of this side's identity file (from 'pqtunnel keygen'); mode 0600."`
	IdentityPEM string `env:"PQT_IDENTITY_PEM" help:"This side's identity as PEM text, instead of PQT_IDENTITY."`
	Peers       string `env:"PQT_PEERS" help:"Pins of the peers this side accepts (from 'pqtunnel pin FILE'), comma-separated; an entry starting with / or . is a file of pins, one per line, re-read on SIGHUP."`
	Cert        string `env:"PQT_CERT" help:"CA mode: this side's certificate chain (PEM file)."`
	Key         string `env:"PQT_KEY" help:"CA mode: this side's private key (PEM file)."`
	CA          string `env:"PQT_CA" help:"CA mode: the CA bundle that signs peer certificates (PEM file)."`
	Allow       string `env:"PQT_ALLOW" help:"CA mode: peers accepted by certificate name: dns:NAME, uri:URI, cn:NAME, comma-separated; empty accepts any the CA signed."`
	ServerName  string `env:"PQT_SERVER_NAME" help:"CA mode: the name a dial side verifies in the peer's certificate; default the host of PQT_TUNNEL."`
	Profile     string `env:"PQT_PROFILE" help:"cnsa2: the CNSA 2.0 profile in one switch: key exchange MLKEM1024 only, ML-DSA-87 authentication (identities from 'pqtunnel keygen --profile cnsa2', CA chains ML-DSA-87 end to end), PQT_KEYLOG refused. Off when empty."`
	Auth        string `env:"PQT_AUTH" envDefault:"any" help:"CA mode: pq refuses a peer whose certificate chain is not ML-DSA end to end (leaf key and every signature up to PQT_CA); any accepts classical and mixed chains, logged pq_auth=false with the reason."`

	HandshakeTimeout time.Duration `env:"PQT_HANDSHAKE_TIMEOUT" envDefault:"10s" help:"Bound on a tunnel handshake including the session proof."`
	DialTimeout      time.Duration `env:"PQT_DIAL_TIMEOUT" envDefault:"5s" help:"Bound on dialling an origin."`
	IdleTimeout      time.Duration `env:"PQT_IDLE_TIMEOUT" envDefault:"8s" help:"A tunnel connection whose peer is silent this long is dead."`
	KeepAlive        time.Duration `env:"PQT_KEEPALIVE" envDefault:"2s" help:"Interval of tunnel keep-alives."`
	FallbackTimeout  time.Duration `env:"PQT_FALLBACK_TIMEOUT" envDefault:"3s" help:"With PQT_TRANSPORT=auto: how long a dial side waits for a QUIC handshake before it uses TCP."`
	QUICRetry        time.Duration `env:"PQT_QUIC_RETRY" envDefault:"30s" help:"With PQT_TRANSPORT=auto: how often a dial side that fell back to TCP tries QUIC again, moving back when it works."`
	MaxStreams       int           `env:"PQT_MAX_STREAMS" envDefault:"4096" help:"Streams the peer may have open at once on one tunnel connection."`
	MaxTotalStreams  int           `env:"PQT_MAX_TOTAL_STREAMS" envDefault:"65536" help:"Streams this process carries at once over all tunnel connections; past it new clients and streams are refused."`
	MaxHandshakes    int           `env:"PQT_MAX_HANDSHAKES" envDefault:"64" help:"Tunnel handshakes a listen side runs at once; more are refused until one finishes."`
	MaxConnections   int           `env:"PQT_MAX_CONNECTIONS" envDefault:"256" help:"Tunnel connections a listen side accepts at once."`
	DrainTimeout     time.Duration `env:"PQT_DRAIN_TIMEOUT" envDefault:"30s" help:"On SIGTERM/SIGINT, how long open streams may finish before they are closed."`

	Metrics       string `env:"PQT_METRICS" help:"Address of the HTTP server for /metrics, /healthz and /readyz; a bare port binds 127.0.0.1. Off when empty."`
	ProxyProtocol string `env:"PQT_PROXY_PROTOCOL" help:"v1 or v2: send a PROXY protocol header with the original client address to each origin this side dials. Off when empty."`

	KeyLog string `env:"PQT_KEYLOG" help:"File to append TLS secrets to in the NSS key log format (both transports), so Wireshark or tshark can decrypt a capture and show the signature algorithm. Debugging only: anyone with the file can decrypt the tunnel; each tunnel logs a WARN while it is on. Off when empty."`

	LogLevel  string `env:"PQT_LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error."`
	LogFormat string `env:"PQT_LOG_FORMAT" envDefault:"text" help:"text (coloured on a terminal) or json."`
}

// parseConfig reads the environment into a Config and validates it.
func parseConfig(environ map[string]string) (*Config, error) {
	var c Config
	if err := env.ParseWithOptions(&c, env.Options{Environment: environ}); err != nil {
		return nil, envError(err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// envError rewrites the env library's errors to name the variable.
func envError(err error) error {
	var pe env.ParseError
	if errors.As(err, &pe) {
		if f, ok := reflect.TypeOf(Config{}).FieldByName(pe.Name); ok {
			return fmt.Errorf("%s: %w", f.Tag.Get("env"), pe.Err)
		}
	}
	return err
}

// Validate checks every setting and names the variable in each error.
func (c *Config) Validate() error {
	switch c.Mode {
	case string(proxy.ModeListen), string(proxy.ModeDial):
	case "":
		return errors.New("PQT_MODE: not set (want listen or dial)")
	default:
		return fmt.Errorf("PQT_MODE: %q is not listen or dial", c.Mode)
	}
	tunnels := c.tunnels()
	if len(tunnels) == 0 {
		return fmt.Errorf("PQT_TUNNEL: not set (a %s side needs %s)", c.Mode, map[string]string{"listen": "the address to listen on, e.g. :8443", "dial": "the peer's host:port"}[c.Mode])
	}
	if c.Mode == string(proxy.ModeListen) && len(tunnels) > 1 {
		return errors.New("PQT_TUNNEL: a listen side takes one address")
	}
	for _, t := range tunnels {
		if err := proxy.CheckHostPort(t); err != nil {
			return fmt.Errorf("PQT_TUNNEL: %q: %w", t, err)
		}
	}
	fwd, err := proxy.ParseRoutes(c.Forward)
	if err != nil {
		return fmt.Errorf("PQT_FORWARD: %w", err)
	}
	tgt, err := proxy.ParseRoutes(c.Target)
	if err != nil {
		return fmt.Errorf("PQT_TARGET: %w", err)
	}
	if len(fwd) == 0 && len(tgt) == 0 {
		return errors.New("PQT_FORWARD and PQT_TARGET: neither is set, so nothing would be carried (a forward dial side sets PQT_FORWARD, its listen side PQT_TARGET)")
	}
	if _, err := transport.Lookup(c.Transport); err != nil {
		return fmt.Errorf("PQT_TRANSPORT: %w", err)
	}
	mode, err := hybridtls.ParsePQMode(c.PQ)
	if err != nil {
		return fmt.Errorf("PQT_PQ: %w", err)
	}
	if _, err := hybridtls.ParseGroups(c.Groups, mode); err != nil {
		return fmt.Errorf("PQT_GROUPS: %w", err)
	}
	if c.Auth != "any" && c.Auth != "pq" {
		return fmt.Errorf("PQT_AUTH: %q is not pq or any", c.Auth)
	}
	if err := c.checkProfile(mode); err != nil {
		return err
	}
	positive := []struct {
		name string
		ok   bool
	}{
		{"PQT_CONNECTIONS", c.Connections >= 1},
		{"PQT_HANDSHAKE_TIMEOUT", c.HandshakeTimeout > 0},
		{"PQT_DIAL_TIMEOUT", c.DialTimeout > 0},
		{"PQT_IDLE_TIMEOUT", c.IdleTimeout > 0},
		{"PQT_KEEPALIVE", c.KeepAlive > 0},
		{"PQT_MAX_STREAMS", c.MaxStreams >= 1},
		{"PQT_MAX_CONNECTIONS", c.MaxConnections >= 1},
		{"PQT_MAX_TOTAL_STREAMS", c.MaxTotalStreams >= 1},
		{"PQT_MAX_HANDSHAKES", c.MaxHandshakes >= 1},
		{"PQT_DRAIN_TIMEOUT", c.DrainTimeout > 0},
		{"PQT_FALLBACK_TIMEOUT", c.FallbackTimeout > 0},
		{"PQT_QUIC_RETRY", c.QUICRetry > 0},
	}
	for _, p := range positive {
		if !p.ok {
			return fmt.Errorf("%s: must be positive", p.name)
		}
	}
	if c.KeepAlive >= c.IdleTimeout {
		return fmt.Errorf("PQT_KEEPALIVE: %s must be shorter than PQT_IDLE_TIMEOUT (%s)", c.KeepAlive, c.IdleTimeout)
	}
	if c.Metrics != "" {
		if err := proxy.CheckHostPort(c.metricsAddr()); err != nil {
			return fmt.Errorf("PQT_METRICS: %q: %w", c.Metrics, err)
		}
	}
	if _, err := c.proxyProtocol(); err != nil {
		return err
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("PQT_LOG_LEVEL: %w", err)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("PQT_LOG_FORMAT: %q is not text or json", c.LogFormat)
	}
	_, err = c.material()
	return err
}

// metricsAddr is PQT_METRICS with a bare port bound to loopback.
func (c *Config) metricsAddr() string {
	if !strings.Contains(c.Metrics, ":") {
		return "127.0.0.1:" + c.Metrics
	}
	return c.Metrics
}

func (c *Config) proxyProtocol() (byte, error) {
	switch strings.ToLower(c.ProxyProtocol) {
	case "":
		return 0, nil
	case "v1", "1":
		return 1, nil
	case "v2", "2":
		return 2, nil
	}
	return 0, fmt.Errorf("PQT_PROXY_PROTOCOL: %q is not v1 or v2", c.ProxyProtocol)
}

func (c *Config) tunnels() []string {
	var out []string
	for _, t := range strings.Split(c.Tunnel, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// material loads identity, certificates and pins from the environment's
// files and checks them against PQT_PROFILE; it runs at start and again on
// SIGHUP.
func (c *Config) material() (*hybridtls.Material, error) {
	m, err := c.loadMaterial()
	if err != nil {
		return nil, err
	}
	if c.Profile == profileCNSA2 {
		if err := checkCNSA2Material(m); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (c *Config) loadMaterial() (*hybridtls.Material, error) {
	pinned := c.Identity != "" || c.IdentityPEM != ""
	ca := c.Cert != "" || c.Key != "" || c.CA != ""
	switch {
	case pinned && ca:
		return nil, errors.New("PQT_IDENTITY and PQT_CERT: both a pinned identity and CA mode are configured; use one")
	case c.Identity != "" && c.IdentityPEM != "":
		return nil, errors.New("PQT_IDENTITY and PQT_IDENTITY_PEM: both are set; use one")
	case !pinned && !ca:
		return nil, errors.New("PQT_IDENTITY: no identity configured: create one with 'pqtunnel keygen -o FILE' and set PQT_IDENTITY and PQT_PEERS, or use CA mode with PQT_CERT, PQT_KEY and PQT_CA")
	}
	m := &hybridtls.Material{}
	if pinned {
		var err error
		if c.Identity != "" {
			m.Identity, err = hybridtls.LoadIdentityFile(c.Identity)
		} else {
			m.Identity, err = hybridtls.ParseIdentityPEM([]byte(c.IdentityPEM))
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", map[bool]string{true: "PQT_IDENTITY", false: "PQT_IDENTITY_PEM"}[c.Identity != ""], err)
		}
		if m.Peers, err = readPeers(c.Peers); err != nil {
			return nil, fmt.Errorf("PQT_PEERS: %w", err)
		}
		if len(m.Peers) == 0 {
			return nil, errors.New("PQT_PEERS: not set: list the pin of each peer this side accepts (print it with 'pqtunnel pin FILE' on the peer)")
		}
		if c.Allow != "" {
			return nil, errors.New("PQT_ALLOW: applies to CA mode only; with pinned identities PQT_PEERS says who is allowed")
		}
		return m, nil
	}
	if c.Peers != "" {
		return nil, errors.New("PQT_PEERS: applies to pinned identities only; in CA mode use PQT_ALLOW")
	}
	for _, v := range []struct{ name, val string }{{"PQT_CERT", c.Cert}, {"PQT_KEY", c.Key}, {"PQT_CA", c.CA}} {
		if v.val == "" {
			return nil, fmt.Errorf("%s: not set: CA mode needs PQT_CERT, PQT_KEY and PQT_CA", v.name)
		}
	}
	if err := hybridtls.CheckKeyFileMode(c.Key); err != nil {
		return nil, fmt.Errorf("PQT_KEY: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("PQT_CERT/PQT_KEY: %w", err)
	}
	m.Certificate = &cert
	caPEM, err := os.ReadFile(c.CA)
	if err != nil {
		return nil, fmt.Errorf("PQT_CA: %w", err)
	}
	m.CAs = x509.NewCertPool()
	if !m.CAs.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("PQT_CA: %s holds no PEM certificate", c.CA)
	}
	if m.Allow, err = hybridtls.ParseAllow(c.Allow); err != nil {
		return nil, fmt.Errorf("PQT_ALLOW: %w", err)
	}
	return m, nil
}

// readPeers parses PQT_PEERS: pins, and files of pins (one per line, '#'
// comments) named by entries that start with '/' or '.'.
func readPeers(s string) ([]hybridtls.Pin, error) {
	var pins []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !strings.HasPrefix(f, "/") && !strings.HasPrefix(f, ".") {
			pins = append(pins, f)
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("pins file: %w", err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if line, _, _ = strings.Cut(line, "#"); strings.TrimSpace(line) != "" {
				pins = append(pins, line)
			}
		}
	}
	return hybridtls.ParsePins(strings.Join(pins, ","))
}

const profileCNSA2 = "cnsa2"

// checkProfile refuses settings that do not comply with PQT_PROFILE, naming
// each variable at fault.
func (c *Config) checkProfile(mode hybridtls.PQMode) error {
	switch c.Profile {
	case "":
		return nil
	case profileCNSA2:
	default:
		return fmt.Errorf("PQT_PROFILE: %q is not cnsa2 (or empty for none)", c.Profile)
	}
	// PQT_GROUPS' default is replaced; any other list is a conflict.
	if c.Groups != hybridtls.GroupNames(hybridtls.DefaultGroups) && !strings.EqualFold(strings.TrimSpace(c.Groups), "MLKEM1024") {
		return fmt.Errorf("PQT_GROUPS: %q does not comply with PQT_PROFILE=cnsa2, which uses MLKEM1024 only (unset PQT_GROUPS)", c.Groups)
	}
	if mode != hybridtls.Strict {
		return errors.New("PQT_PQ: PQT_PROFILE=cnsa2 allows no classical key exchange (unset PQT_PQ or set it to strict)")
	}
	if c.KeyLog != "" {
		return errors.New("PQT_KEYLOG: not allowed with PQT_PROFILE=cnsa2: it writes the session secrets out")
	}
	return nil
}

// groups is the key-exchange list in force: PQT_GROUPS, or MLKEM1024 alone
// under PQT_PROFILE=cnsa2.
func (c *Config) groups(mode hybridtls.PQMode) ([]tls.CurveID, error) {
	if c.Profile == profileCNSA2 {
		return []tls.CurveID{tls.MLKEM1024}, nil
	}
	return hybridtls.ParseGroups(c.Groups, mode)
}

// checkCNSA2Material refuses this side's own identity or certificate when
// it is not ML-DSA-87.
func checkCNSA2Material(m *hybridtls.Material) error {
	if m.Pinned() {
		if p := m.Identity.MLDSA.PublicKey().Parameters(); p != mldsa.MLDSA87() {
			return fmt.Errorf("PQT_IDENTITY: the identity's key is %s; PQT_PROFILE=cnsa2 needs ML-DSA-87 (make one with 'pqtunnel keygen --profile cnsa2 -o FILE')", p)
		}
		return nil
	}
	leaf := m.Certificate.Leaf
	if k, ok := leaf.PublicKey.(*mldsa.PublicKey); !ok || k.Parameters() != mldsa.MLDSA87() || leaf.SignatureAlgorithm != x509.MLDSA87 {
		return fmt.Errorf("PQT_CERT: the certificate's key is %s and it is signed with %s; PQT_PROFILE=cnsa2 needs ML-DSA-87 for both (e.g. from 'pqtunnel ca init -alg ML-DSA-87')",
			hybridtls.SignatureSchemeName(hybridtls.SignatureScheme(leaf)), leaf.SignatureAlgorithm)
	}
	return nil
}

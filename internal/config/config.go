package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/proxy"
	"github.com/pqtunnel/pqtunnel/tlsroute"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// Config is the environment parsed once into the libraries' typed options.
type Config struct {
	// Engine is the engine's policy; TLS, Logger and Metrics are left for
	// the caller, who owns the process's logger and metrics.
	Engine proxy.Config
	// Policy is the TLS policy; Logger is left for the caller (the engine counts refusals itself).
	Policy hybridtls.Policy
	// Auth is the authentication mode with its identity, certificates and
	// pins as loaded by Parse; nil when no route goes through a tunnel
	// (proxy.ModeLocal).
	Auth auth.Authenticator
	// TLSMaterial is what tls:// routes serve and verify with, as loaded
	// by Parse; nil when no route is one.
	TLSMaterial *tlsroute.Material
	// MetricsAddr is where the metrics server listens; empty when it is off.
	MetricsAddr string
	// Control is the control socket 'pqtunnel status' asks.
	Control  Control
	LogLevel slog.Level
	// LogJSON selects slog's JSON handler instead of text.
	LogJSON bool
	// Profile is PQT_PROFILE: ProfileCNSA2 or empty.
	Profile string
	// KeyLog is the path of the TLS key log; empty when off (see OpenKeyLog).
	KeyLog string

	// vars are the variables as read, kept for LoadAuth.
	vars Vars
}

// Parse reads environ (name to value) into a Config. Every error names the
// variable at fault; PQT_* names that are not pqtunnel variables are
// reported too, each with the nearest known name, before any other error,
// since a misspelt name is the likely cause of a setting found missing.
func Parse(environ map[string]string) (*Config, error) {
	unknown := unknownVariables(environ)
	c, err := parse(environ)
	if err != nil || len(unknown) > 0 {
		return nil, errors.Join(append(unknown, err)...)
	}
	return c, nil
}

func parse(environ map[string]string) (*Config, error) {
	var v Vars
	if err := env.ParseWithOptions(&v, env.Options{Environment: environ}); err != nil {
		return nil, envError(err)
	}
	c := &Config{vars: v}
	if err := c.parseTunnel(&v); err != nil {
		return nil, err
	}
	if err := c.parsePolicy(&v); err != nil {
		return nil, err
	}
	if err := c.parseLimits(&v); err != nil {
		return nil, err
	}
	if err := c.parseOperation(&v); err != nil {
		return nil, err
	}
	c.Control = ControlOf(environ)
	if err := c.parseTLSRoutes(&v); err != nil {
		return nil, err
	}
	if c.Engine.Mode == proxy.ModeLocal {
		if err := v.checkNoTunnelMaterial(c.Engine.Forward, c.Engine.Target); err != nil {
			return nil, err
		}
		return c, nil
	}
	a, err := v.loadAuth()
	if err != nil {
		return nil, err
	}
	c.Auth = a
	if err := checkAllowNames(a, c.Engine.Forward, "PQT_FORWARD"); err != nil {
		return nil, err
	}
	if err := checkAllowNames(a, c.Engine.Target, "PQT_TARGET"); err != nil {
		return nil, err
	}
	return c, nil
}

// envError rewrites the env library's errors to name the variable.
func envError(err error) error {
	var pe env.ParseError
	if errors.As(err, &pe) {
		if f, ok := reflect.TypeFor[Vars]().FieldByName(pe.Name); ok {
			return fmt.Errorf("%s: %w", f.Tag.Get("env"), pe.Err)
		}
	}
	return err
}

func (c *Config) parseTunnel(v *Vars) error {
	e := &c.Engine
	var err error
	if e.Forward, err = proxy.ParseRoutes(v.Forward); err != nil {
		return fmt.Errorf("PQT_FORWARD: %w", err)
	}
	if e.Target, err = proxy.ParseRoutes(v.Target); err != nil {
		return fmt.Errorf("PQT_TARGET: %w", err)
	}
	if len(e.Forward) == 0 && len(e.Target) == 0 {
		return errors.New("PQT_FORWARD and PQT_TARGET: neither is set, so nothing would be carried (a forward dial side sets PQT_FORWARD, its listen side PQT_TARGET)")
	}
	// A side whose every route joins one of its own needs no tunnel: it
	// runs as a local TLS wrapper, without PQT_MODE, PQT_TUNNEL or identity.
	if v.Mode == "" && v.Tunnel == "" && !proxy.NeedsTunnel(e.Forward, e.Target) {
		e.Mode = proxy.ModeLocal
		return nil
	}
	switch proxy.Mode(v.Mode) {
	case proxy.ModeListen, proxy.ModeDial:
		e.Mode = proxy.Mode(v.Mode)
	case "":
		return errors.New("PQT_MODE: not set (want listen or dial; only a side whose every route joins a route of the same name, one of them tls://, runs without)")
	default:
		return fmt.Errorf("PQT_MODE: %q is not listen or dial", v.Mode)
	}
	for _, t := range strings.Split(v.Tunnel, ",") {
		if t = strings.TrimSpace(t); t != "" {
			e.Tunnel = append(e.Tunnel, t)
		}
	}
	if len(e.Tunnel) == 0 {
		need := map[proxy.Mode]string{proxy.ModeListen: "the address to listen on, e.g. :8443", proxy.ModeDial: "the peer's host:port"}[e.Mode]
		return fmt.Errorf("PQT_TUNNEL: not set (a %s side needs %s)", e.Mode, need)
	}
	if e.Mode == proxy.ModeListen && len(e.Tunnel) > 1 {
		return errors.New("PQT_TUNNEL: a listen side takes one address")
	}
	for _, t := range e.Tunnel {
		if err := proxy.CheckHostPort(t); err != nil {
			return fmt.Errorf("PQT_TUNNEL: %q: %w", t, err)
		}
	}
	// The transports are those the program registered (cmd/pqtunnel).
	if e.Transport, err = transport.Lookup(v.Transport); err != nil {
		return fmt.Errorf("PQT_TRANSPORT: %w", err)
	}
	return nil
}

func (c *Config) parsePolicy(v *Vars) error {
	mode, err := hybridtls.ParsePQMode(v.PQ)
	if err != nil {
		return fmt.Errorf("PQT_PQ: %w", err)
	}
	if v.Auth != "any" && v.Auth != "pq" {
		return fmt.Errorf("PQT_AUTH: %q is not pq or any", v.Auth)
	}
	if err := v.checkProfile(mode); err != nil {
		return err
	}
	groups, err := v.groups(mode)
	if ce := (*hybridtls.ClassicalGroupError)(nil); errors.As(err, &ce) {
		return &rephrased{err: err, msg: fmt.Sprintf("PQT_GROUPS: classical group %s is not allowed with PQT_PQ=strict: it has no post-quantum protection (remove it, or set PQT_PQ=prefer)",
			hybridtls.GroupName(ce.Group))}
	}
	if err != nil {
		return fmt.Errorf("PQT_GROUPS: %w", err)
	}
	c.Policy = hybridtls.Policy{
		Mode: mode, Groups: groups, ALPN: wire.ALPN, RetiredALPNs: wire.RetiredALPNs, SettingName: policySettingName,
		Auth: auth.Policy{
			ServerName: v.ServerName, SettingName: authSettingName,
			RequirePQAuth: v.Auth == "pq" || v.Profile == ProfileCNSA2, RequireMLDSA87: v.Profile == ProfileCNSA2,
		},
	}
	c.Profile, c.KeyLog, c.Engine.KeyLog = v.Profile, v.KeyLog, v.KeyLog
	return nil
}

// ProfileCNSA2 is the PQT_PROFILE value for the CNSA 2.0 profile, also
// keygen's --profile value for an ML-DSA-87 identity.
const ProfileCNSA2 = "cnsa2"

// checkProfile refuses settings that do not comply with PQT_PROFILE, naming
// each variable at fault.
func (v *Vars) checkProfile(mode hybridtls.PQMode) error {
	switch v.Profile {
	case "":
		return nil
	case ProfileCNSA2:
	default:
		return fmt.Errorf("PQT_PROFILE: %q is not cnsa2 (or empty for none)", v.Profile)
	}
	// PQT_GROUPS' default is replaced; any other list is a conflict.
	if v.Groups != hybridtls.GroupNames(hybridtls.DefaultGroups) && !strings.EqualFold(strings.TrimSpace(v.Groups), "MLKEM1024") {
		return fmt.Errorf("PQT_GROUPS: %q does not comply with PQT_PROFILE=cnsa2, which uses MLKEM1024 only (unset PQT_GROUPS)", v.Groups)
	}
	if mode != hybridtls.Strict {
		return errors.New("PQT_PQ: PQT_PROFILE=cnsa2 allows no classical key exchange (unset PQT_PQ or set it to strict)")
	}
	if v.KeyLog != "" {
		return errors.New("PQT_KEYLOG: not allowed with PQT_PROFILE=cnsa2: it writes the session secrets out")
	}
	return nil
}

// groups is the key-exchange list in force: PQT_GROUPS, or MLKEM1024 alone
// under PQT_PROFILE=cnsa2.
func (v *Vars) groups(mode hybridtls.PQMode) ([]tls.CurveID, error) {
	if v.Profile == ProfileCNSA2 {
		return []tls.CurveID{tls.MLKEM1024}, nil
	}
	return hybridtls.ParseGroups(v.Groups, mode)
}

// OpenKeyLog opens PQT_KEYLOG for appending TLS secrets, or returns nil
// when it is off. The file is kept open for the life of the process;
// crypto/tls serialises its writes, and O_APPEND keeps other writers'
// lines whole.
func (c *Config) OpenKeyLog() (io.WriteCloser, error) {
	if c.KeyLog == "" {
		return nil, nil
	}
	f, err := os.OpenFile(c.KeyLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("PQT_KEYLOG: %w", err)
	}
	if err := auth.CheckKeyFileMode(c.KeyLog); err != nil {
		_ = f.Close() // refused
		return nil, fmt.Errorf("PQT_KEYLOG: %w", err)
	}
	return f, nil
}

// engineFields are the proxy.Config fields whose variable fills a Vars
// field of another name.
var engineFields = map[string]string{"PeerShare": "MaxPeerShare"}

// engineSettingName names a proxy.Config field by the variable that sets
// it, so that the engine's runtime messages say which variable to change;
// a field no variable sets keeps its name.
func engineSettingName(field string) string {
	if f, ok := engineFields[field]; ok {
		field = f
	}
	if _, ok := reflect.TypeFor[Vars]().FieldByName(field); !ok {
		return field
	}
	return Name(field)
}

// policySettingName names hybridtls's settings by the variables that set
// them, so that a refused handshake says which variable to change.
func policySettingName(s hybridtls.Setting) string {
	return nameByField(map[hybridtls.Setting]string{hybridtls.SettingGroups: "Groups", hybridtls.SettingMode: "PQ"}, s)
}

// authSettingName names the authenticators' settings by the variables
// that set them, so that a refused peer or a failed check says which
// variable to change.
func authSettingName(s auth.Setting) string {
	switch s {
	case auth.SettingPQAuth:
		return Name("Auth") + "=pq"
	case auth.SettingProfile:
		return Name("Profile") + "=cnsa2"
	}
	return nameByField(map[auth.Setting]string{
		auth.SettingCAs: "CA", auth.SettingPeers: "Peers", auth.SettingAllow: "Allow", auth.SettingIdentity: "Identity", auth.SettingCert: "Cert",
	}, s)
}

// nameByField names s by the variable of its Vars field in fields, else,
// for a setting no variable sets, by s.String().
func nameByField[S interface {
	comparable
	fmt.Stringer
}](fields map[S]string, s S) string {
	field, ok := fields[s]
	if !ok {
		return s.String()
	}
	return Name(field)
}

func (c *Config) parseLimits(v *Vars) error {
	positive := []struct {
		name string
		ok   bool
	}{
		{"PQT_CONNECTIONS", v.Connections >= 1},
		{"PQT_HANDSHAKE_TIMEOUT", v.HandshakeTimeout > 0},
		{"PQT_DIAL_TIMEOUT", v.DialTimeout > 0},
		{"PQT_IDLE_TIMEOUT", v.IdleTimeout > 0},
		{"PQT_KEEPALIVE", v.KeepAlive > 0},
		{"PQT_MAX_STREAMS", v.MaxStreams >= 1},
		{"PQT_MAX_CONNECTIONS", v.MaxConnections >= 1},
		{"PQT_MAX_TOTAL_STREAMS", v.MaxTotalStreams >= 1},
		{"PQT_MAX_HANDSHAKES", v.MaxHandshakes >= 1},
		{"PQT_DRAIN_TIMEOUT", v.DrainTimeout > 0},
		{"PQT_FALLBACK_TIMEOUT", v.FallbackTimeout > 0},
		{"PQT_QUIC_RETRY", v.QUICRetry > 0},
		{"PQT_RESOLVE_INTERVAL", v.ResolveInterval > 0},
	}
	for _, p := range positive {
		if !p.ok {
			return fmt.Errorf("%s: must be positive", p.name)
		}
	}
	if v.ReadyTargetDown < 0 {
		return fmt.Errorf("PQT_READY_TARGET_DOWN: %s is negative (0 turns the check off)", v.ReadyTargetDown)
	}
	if v.MaxConnMemory < 1<<20 {
		return fmt.Errorf("PQT_MAX_CONN_MEMORY: %s is less than the 1MiB a tunnel connection needs", v.MaxConnMemory)
	}
	if v.MaxClientsPerIP < -1 {
		return fmt.Errorf("PQT_MAX_CLIENTS_PER_IP: %d is not a bound (want a positive number, 0 for a quarter of PQT_MAX_TOTAL_STREAMS, or -1 for none)", v.MaxClientsPerIP)
	}
	if v.MaxPeerShare < 1 || v.MaxPeerShare > 100 {
		return fmt.Errorf("PQT_MAX_PEER_SHARE: %d is not a percentage from 1 to 100", v.MaxPeerShare)
	}
	if v.StreamIdleTimeout < 0 {
		return fmt.Errorf("PQT_STREAM_IDLE_TIMEOUT: %s is negative (0 or empty turns it off)", v.StreamIdleTimeout)
	}
	if err := checkCongestion(v.TCPCongestion); err != nil {
		return err
	}
	if v.KeepAliveTimeout < 0 {
		return fmt.Errorf("PQT_KEEPALIVE_TIMEOUT: %s is negative; 0 turns the keep-alive probes off", v.KeepAliveTimeout)
	}
	if v.FallbackLoss < 0 || v.FallbackLoss >= 100 {
		return fmt.Errorf("PQT_FALLBACK_LOSS: %g is not a percentage below 100 (0 turns the move off)", v.FallbackLoss)
	}
	if v.KeepAlive >= v.IdleTimeout {
		return fmt.Errorf("PQT_KEEPALIVE: %s must be shorter than PQT_IDLE_TIMEOUT (%s)", v.KeepAlive, v.IdleTimeout)
	}
	e := &c.Engine
	e.Connections = v.Connections
	e.MaxConnections = v.MaxConnections
	e.MaxTotalStreams = v.MaxTotalStreams
	e.DialTimeout = v.DialTimeout
	e.FallbackTimeout = v.FallbackTimeout
	e.QUICRetry = v.QUICRetry
	e.FallbackLoss = v.FallbackLoss
	if v.FallbackLoss == 0 {
		e.FallbackLoss = -1 // the engine's zero is its default
	}
	e.ResolveInterval = v.ResolveInterval
	e.DrainTimeout = v.DrainTimeout
	e.MaxClientsPerIP = v.MaxClientsPerIP
	e.PeerShare = v.MaxPeerShare
	e.StreamIdleTimeout = v.StreamIdleTimeout
	e.SettingName = engineSettingName
	e.ReadyTargetDown = v.ReadyTargetDown
	if v.ReadyTargetDown == 0 {
		e.ReadyTargetDown = -1 // the engine's zero is its default
	}
	e.Mux = transport.Config{
		HandshakeTimeout: v.HandshakeTimeout,
		KeepAlive:        v.KeepAlive,
		IdleTimeout:      v.IdleTimeout,
		KeepAliveTimeout: keepAliveTimeout(v.KeepAliveTimeout),
		TCPCongestion:    v.TCPCongestion,
		MaxStreams:       v.MaxStreams,
		MaxHandshakes:    v.MaxHandshakes,
		MaxConnMemory:    int(v.MaxConnMemory),
	}
	return nil
}

// availableCongestion lists the congestion controls the kernel offers.
const availableCongestion = "/proc/sys/net/ipv4/tcp_available_congestion_control"

// checkCongestion refuses a PQT_TCP_CONGESTION the kernel does not offer,
// so that a typo or a missing module is a start-up error rather than a
// warning per tunnel connection.
func checkCongestion(name string) error {
	if name == "" {
		return nil
	}
	b, err := os.ReadFile(availableCongestion)
	if err != nil {
		return fmt.Errorf("PQT_TCP_CONGESTION: %q: cannot read the congestion controls this system offers (Linux only): %w", name, err)
	}
	offered := strings.Fields(string(b))
	if !slices.Contains(offered, name) {
		return fmt.Errorf("PQT_TCP_CONGESTION: %q is not offered by this kernel (it offers %s): load its module (modprobe tcp_%s) or leave PQT_TCP_CONGESTION empty (bbr where the kernel offers it, else its default)", name, strings.Join(offered, ", "), name)
	}
	return nil
}

// keepAliveTimeout is PQT_KEEPALIVE_TIMEOUT as transport.Config takes it,
// where zero is the default and a negative value turns the probes off.
func keepAliveTimeout(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func (c *Config) parseOperation(v *Vars) error {
	if v.Metrics != "" {
		c.MetricsAddr = v.Metrics
		if !strings.Contains(v.Metrics, ":") {
			c.MetricsAddr = "127.0.0.1:" + v.Metrics // a bare port binds loopback
		}
		if err := proxy.CheckHostPort(c.MetricsAddr); err != nil {
			return fmt.Errorf("PQT_METRICS: %q: %w", v.Metrics, err)
		}
	}
	mode, err := strconv.ParseUint(v.UnixMode, 8, 32)
	if err != nil || mode == 0 || mode > 0o777 {
		return fmt.Errorf("PQT_UNIX_MODE: %q is not an octal mode from 0001 to 0777", v.UnixMode)
	}
	c.Engine.UnixSocketMode = fs.FileMode(mode)
	c.Engine.UnixSocketGroup = v.UnixGroup
	switch strings.ToLower(v.ProxyProtocol) {
	case "":
	case "v1", "1":
		c.Engine.ProxyProtocol = 1
	case "v2", "2":
		c.Engine.ProxyProtocol = 2
	default:
		return fmt.Errorf("PQT_PROXY_PROTOCOL: %q is not v1 or v2", v.ProxyProtocol)
	}
	switch strings.ToLower(v.AccessLog) {
	case "off":
	case "on":
		c.Engine.AccessLog = true
	default:
		return fmt.Errorf("PQT_ACCESS_LOG: %q is not on or off", v.AccessLog)
	}
	if err := c.LogLevel.UnmarshalText([]byte(v.LogLevel)); err != nil {
		return fmt.Errorf("PQT_LOG_LEVEL: %q is not debug, info, warn or error", v.LogLevel)
	}
	switch v.LogFormat {
	case "text":
	case "json":
		c.LogJSON = true
	default:
		return fmt.Errorf("PQT_LOG_FORMAT: %q is not text or json", v.LogFormat)
	}
	return nil
}

// Explain names the variable behind a library's typed error (a
// proxy.ConfigError says which Config field was at fault); other errors
// come back as they are.
func Explain(err error) error {
	var ce *proxy.ConfigError
	if errors.As(err, &ce) {
		if _, ok := reflect.TypeFor[Vars]().FieldByName(ce.Field); ok {
			return fmt.Errorf("%s: %w", Name(ce.Field), ce.Err)
		}
	}
	return err
}

// rephrased is a library's error told in the variables' terms; errors.Is
// and errors.As still see the library's error.
type rephrased struct {
	msg string
	err error
}

func (e *rephrased) Error() string { return e.msg }

func (e *rephrased) Unwrap() error { return e.err }

// Command pqtunnel wraps an unmodified TCP service in a post-quantum tunnel:
// TLS 1.3 with a hybrid X25519+ML-KEM-768 key exchange over QUIC or TCP,
// both sides authenticated. It is configured by PQT_* environment variables;
// 'pqtunnel help' lists them.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/lmittmann/tint"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/proxy"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], environ(), os.Stdout, os.Stderr))
}

func environ() map[string]string {
	m := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

func run(args []string, environ map[string]string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runTunnel(environ, stderr)
	case "help", "-h", "--help":
		printHelp(stdout)
	case "version", "--version":
		fmt.Fprintln(stdout, "pqtunnel", buildVersion())
	case "keygen":
		err = keygen(args, stdout, stderr)
	case "pin":
		err = printPin(args, stdout)
	case "demo":
		err = demo(stdout, stderr)
	case "check":
		err = check(environ, stdout)
	case "ca":
		err = caCommand(args, stdout, stderr)
	default:
		err = fmt.Errorf("unknown command %q (try 'pqtunnel help')", cmd)
	}
	if err != nil {
		fmt.Fprintln(stderr, "pqtunnel:", err)
		return 1
	}
	return 0
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "devel"
}

func printHelp(w io.Writer) {
	fmt.Fprint(w, `pqtunnel wraps a TCP service in a post-quantum tunnel (hybrid X25519+ML-KEM-768 TLS 1.3 over QUIC or TCP).

Usage:
  pqtunnel [run]           run as configured by the environment below
  pqtunnel keygen -o FILE  write a new hybrid identity (ML-DSA-65 + Ed25519) and print its pin
                           (--profile cnsa2: ML-DSA-87)
  pqtunnel pin FILE        print the pin of an identity
  pqtunnel ca init -o DIR  create a small ML-DSA CA for CA mode (-alg ML-DSA-65|ML-DSA-87)
  pqtunnel ca issue --ca DIR --name dns:NAME [--uri URI] [--days 90] -o PREFIX
                           issue an ML-DSA certificate: PREFIX.key (0600) and PREFIX.crt
  pqtunnel ca sign --ca DIR [-o FILE] CSR
                           sign a request for an ML-DSA key made elsewhere
  pqtunnel check           probe the PQT_TUNNEL peers over each transport and group, and say what would connect
  pqtunnel demo            run an origin, a listen side and a dial side locally and push traffic
  pqtunnel version         print the version
  pqtunnel help            this text

Environment:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	t := reflect.TypeOf(Config{})
	for i := range t.NumField() {
		f := t.Field(i)
		def := f.Tag.Get("envDefault")
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", f.Tag.Get("env"), def, f.Tag.Get("help"))
	}
	_ = tw.Flush() // a failed write to the terminal has nowhere to go
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(c *Config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.LogLevel) // validated
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, NoColor: !isTerminal(w)}))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// engineConfig turns the validated environment into the engine's typed options.
func engineConfig(c *Config, log *slog.Logger) (proxy.Config, error) {
	metrics := proxy.NewMetrics()
	pp, _ := c.proxyProtocol()             // validated
	mode, _ := hybridtls.ParsePQMode(c.PQ) // validated
	groups, _ := c.groups(mode)            // validated
	fwd, _ := proxy.ParseRoutes(c.Forward) // validated
	tgt, _ := proxy.ParseRoutes(c.Target)  // validated
	tr, _ := transport.Lookup(c.Transport) // validated
	m, err := c.material()
	if err != nil {
		return proxy.Config{}, err
	}
	policy := hybridtls.Policy{
		Mode: mode, Groups: groups, ServerName: c.ServerName, ALPN: wire.ALPN, Logger: log,
		OnRefused: metrics.HandshakeFailed, RequirePQAuth: c.Auth == "pq" || c.Profile == profileCNSA2,
		RequireMLDSA87: c.Profile == profileCNSA2,
	}
	if c.KeyLog != "" {
		// Kept open for the life of the process; crypto/tls serialises
		// its writes, and O_APPEND keeps other writers' lines whole.
		f, err := os.OpenFile(c.KeyLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return proxy.Config{}, fmt.Errorf("PQT_KEYLOG: %w", err)
		}
		if err := hybridtls.CheckKeyFileMode(c.KeyLog); err != nil {
			_ = f.Close() // refused
			return proxy.Config{}, fmt.Errorf("PQT_KEYLOG: %w", err)
		}
		policy.KeyLog = f
	}
	store, err := hybridtls.NewStore(policy, m)
	if err != nil {
		return proxy.Config{}, fmt.Errorf("PQT_IDENTITY: %w", err)
	}
	return proxy.Config{
		Mode:            proxy.Mode(c.Mode),
		Tunnel:          c.tunnels(),
		Transport:       tr,
		Connections:     c.Connections,
		MaxConnections:  c.MaxConnections,
		MaxTotalStreams: c.MaxTotalStreams,
		Forward:         fwd,
		Target:          tgt,
		TLS:             store,
		Mux: transport.Config{
			HandshakeTimeout: c.HandshakeTimeout,
			KeepAlive:        c.KeepAlive,
			IdleTimeout:      c.IdleTimeout,
			MaxStreams:       c.MaxStreams,
			MaxHandshakes:    c.MaxHandshakes,
		},
		DialTimeout:     c.DialTimeout,
		FallbackTimeout: c.FallbackTimeout,
		QUICRetry:       c.QUICRetry,
		DrainTimeout:    c.DrainTimeout,
		ProxyProtocol:   pp,
		Metrics:         metrics,
		Logger:          log,
		KeyLog:          c.KeyLog,
	}, nil
}

func runTunnel(environ map[string]string, stderr io.Writer) error {
	c, err := parseConfig(environ)
	if err != nil {
		return err
	}
	log := newLogger(c, stderr)
	pc, err := engineConfig(c, log)
	if err != nil {
		return err
	}
	e, err := proxy.New(pc)
	if err != nil {
		return err
	}
	log.Info("pqtunnel starting", "version", buildVersion(), "mode", c.Mode, "transport", c.Transport,
		"pq", c.PQ, "profile", c.Profile, "groups", hybridtls.GroupNames(pc.TLS.Policy().Groups), "identity", pc.TLS.Material().Name())

	if c.KeyLog != "" {
		log.Warn("PQT_KEYLOG is on: TLS secrets of every tunnel are written to the key log, and anyone who reads it can decrypt the traffic", "keylog", c.KeyLog)
	}
	if transport.UsesUDP(pc.Transport) {
		warnUDPBuffers(log)
	}
	if c.Metrics != "" {
		stop, err := serveMetrics(c.metricsAddr(), e.Handler(), log)
		if err != nil {
			return err
		}
		defer stop()
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	stopping := false
	for {
		select {
		case err := <-done:
			return err
		case s := <-sigs:
			switch {
			case s == syscall.SIGHUP:
				reload(c, pc.TLS, log)
			case stopping:
				log.Warn("second signal: exiting now", "signal", s.String())
				e.Close() // tell peers at once rather than let them time out
				return errors.New("interrupted")
			default:
				stopping = true
				log.Info("shutting down", "signal", s.String(), "drain_timeout", c.DrainTimeout)
				cancel()
			}
		}
	}
}

// reload re-reads identity, certificates and pins; on any error the
// material in force stays.
func reload(c *Config, store *hybridtls.Store, log *slog.Logger) {
	m, err := c.material()
	if err == nil {
		err = store.Swap(m)
	}
	if err != nil {
		log.Error("reload failed: keeping the identity and pins in force", "err", err)
		return
	}
	log.Info("reloaded identity and pins", "identity", m.Name(), "peers", len(m.Peers))
}

// serveMetrics starts the HTTP server for /metrics, /healthz and /readyz;
// the returned function stops it.
func serveMetrics(addr string, h http.Handler, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("PQT_METRICS: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return func() {
		_ = srv.Close() // shutting down
		<-done
	}, nil
}

// quicBufferSize is the socket buffer quic-go asks for.
const quicBufferSize = 7 << 20

// warnUDPBuffers says once, with the fix, when the kernel caps UDP socket
// buffers below what quic-go needs for full throughput; quic-go's own
// warning goes to the standard logger, so it is silenced in favour of this.
func warnUDPBuffers(log *slog.Logger) {
	_ = os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true") // only read by quic-go
	if os.Geteuid() == 0 {
		return // quic-go forces the size past the limit with CAP_NET_ADMIN
	}
	if fix := udpBufferFix(os.ReadFile); fix != "" {
		log.Warn("UDP socket buffers are capped below what QUIC needs for full throughput",
			"fix", fix, "want_bytes", quicBufferSize)
	}
}

// udpBufferFix returns the sysctl command that lifts the kernel's UDP buffer
// caps to what quic-go asks for, or "" when they suffice or cannot be read.
func udpBufferFix(readFile func(string) ([]byte, error)) string {
	var low []string
	for _, name := range []string{"rmem_max", "wmem_max"} {
		data, err := readFile("/proc/sys/net/core/" + name)
		if err != nil {
			return "" // not Linux, or no /proc: nothing to say
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && n < quicBufferSize {
			low = append(low, fmt.Sprintf("net.core.%s=%d", name, quicBufferSize))
		}
	}
	if len(low) == 0 {
		return ""
	}
	return "sysctl -w " + strings.Join(low, " ")
}

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
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/lmittmann/tint"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/config"
	"github.com/pqtunnel/pqtunnel/proxy"
	"github.com/pqtunnel/pqtunnel/tlsroute"
	"github.com/pqtunnel/pqtunnel/transport"
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

// run runs one subcommand and returns the exit code: 0, 1 for a failure,
// 2 for a usage error (unknown command or flag, wrong arguments).
func run(args []string, environ map[string]string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runTunnel(args, environ, stdout, stderr)
	case "help", "-h", "-help", "--help":
		err = help(args, stdout, stderr)
	case "version", "--version":
		err = printVersion(args, stdout, stderr)
	case "keygen":
		err = keygen(args, stdout, stderr)
	case "pin":
		err = printPin(args, stdout, stderr)
	case "demo":
		err = demo(args, stdout, stderr)
	case "check":
		err = runCheck(args, environ, stdout, stderr)
	case "ca":
		err = caCommand(args, stdout, stderr)
	case "status":
		err = status(args, environ, stdout, stderr)
	default:
		err = &usageError{fmt.Errorf("unknown command %q (try 'pqtunnel help')", cmd)}
	}
	if err == nil || errors.Is(err, errHelpShown) {
		return 0
	}
	// Joined errors (several unknown variables, then a missing one) print
	// one per line, each marked as pqtunnel's.
	errs := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	}
	for _, e := range errs {
		fmt.Fprintln(stderr, "pqtunnel:", e)
	}
	if ue := (*usageError)(nil); errors.As(err, &ue) {
		return 2
	}
	return 1
}

func help(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("help", "help", "print the subcommands and every variable with its default")
	if err := fs.parse(args, 0, stdout, stderr); err != nil {
		return err
	}
	printHelp(stdout)
	return nil
}

func printHelp(w io.Writer) {
	fmt.Fprintf(w, `pqtunnel wraps a TCP service in a post-quantum tunnel (hybrid X25519+ML-KEM-768 TLS 1.3 over QUIC or TCP).

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
  pqtunnel check           probe the %s peers over each transport and group, and say what would connect
  pqtunnel status [--json] show the running side's tunnels, routes and limits (asked at its %s server)
  pqtunnel demo            run an origin, a listen side and a dial side locally and push traffic
  pqtunnel version         print the version
  pqtunnel help            this text
Each subcommand takes --help.

Environment:
`, config.Name("Tunnel"), config.Name("Metrics"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, v := range config.Variables() {
		def := v.Default
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.Name, def, v.Help)
	}
	_ = tw.Flush() // a failed write to the terminal has nowhere to go
}

func printVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "version", "print the version, the source revision and the Go version it was built with")
	if err := fs.parse(args, 0, stdout, stderr); err != nil {
		return err
	}
	bi, _ := debug.ReadBuildInfo() // nil without build info; versionLine copes
	fmt.Fprintln(stdout, "pqtunnel", versionLine(version, bi))
	return nil
}

// buildVersion is the short version for the start-up log line.
func buildVersion() string {
	bi, _ := debug.ReadBuildInfo() // nil without build info
	return moduleVersion(version, bi)
}

// moduleVersion is the version stamped by -ldflags, else the module version
// (set by 'go install ...@VERSION'), else "devel".
func moduleVersion(stamped string, bi *debug.BuildInfo) string {
	switch {
	case stamped != "":
		return stamped
	case bi != nil && bi.Main.Version != "" && bi.Main.Version != "(devel)":
		return bi.Main.Version
	}
	return "devel"
}

// versionLine says what was built, from what source and with which Go:
// "v1.2.0 go1.27.3 linux/amd64", or for a build from a checkout
// "devel rev 0fcde9a1c2d3 2026-12-01T20:06:36Z modified go1.27.3 linux/amd64".
func versionLine(stamped string, bi *debug.BuildInfo) string {
	parts := []string{moduleVersion(stamped, bi)}
	goVersion := runtime.Version()
	if bi != nil {
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if rev := settings["vcs.revision"]; rev != "" {
			parts = append(parts, "rev", rev[:min(len(rev), 12)])
			if t := settings["vcs.time"]; t != "" {
				parts = append(parts, t)
			}
			if settings["vcs.modified"] == "true" {
				parts = append(parts, "modified")
			}
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
	}
	return strings.Join(append(parts, goVersion, runtime.GOOS+"/"+runtime.GOARCH), " ")
}

// newLogger makes the process's logger; JSON logs give durations as text
// ("4.14ms") rather than integer nanoseconds, for people and scripts alike.
func newLogger(c *config.Config, w io.Writer) *slog.Logger {
	if c.LogJSON {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: c.LogLevel, ReplaceAttr: durationAsText}))
	}
	return slog.New(tint.NewTextHandler(w, &tint.Options{Level: c.LogLevel, NoColor: !isTerminal(w)}))
}

func durationAsText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// engineConfig completes the parsed configuration with what belongs to the
// process: its logger, its metrics and the TLS store built from the material
// Parse loaded.
func engineConfig(c *config.Config, log *slog.Logger) (proxy.Config, error) {
	metrics := proxy.NewMetrics()
	policy := c.Policy
	// One limit for the handshake lines of the TLS policy and of the engine.
	hslog := proxy.NewHandshakeLog(log.Handler(), 0)
	// The engine counts the policy's refusals in its metrics itself.
	policy.Logger = slog.New(hslog)
	keyLog, err := c.OpenKeyLog()
	if err != nil {
		return proxy.Config{}, err
	}
	if keyLog != nil {
		policy.KeyLog = keyLog // open for the life of the process
	}
	pc := c.Engine
	pc.Metrics, pc.Logger, pc.HandshakeLog = metrics, log, hslog
	if c.Auth != nil {
		if pc.TLS, err = hybridtls.NewStore(policy, c.Auth); err != nil {
			return proxy.Config{}, fmt.Errorf("tls: %w", err)
		}
	}
	if c.TLSMaterial != nil {
		if pc.TLSRoutes, err = tlsroute.NewStore(policy, c.TLSMaterial, log); err != nil {
			return proxy.Config{}, fmt.Errorf("tls routes: %w", err)
		}
	}
	return pc, nil
}

func runTunnel(args []string, environ map[string]string, stdout, stderr io.Writer) error {
	fs := newFlags("run", "[run]", "run one side of a tunnel as the environment says ('pqtunnel help' lists the variables)")
	if err := fs.parse(args, 0, stdout, stderr); err != nil {
		return err
	}
	c, err := config.Parse(environ)
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
		return config.Explain(err)
	}
	if pc.Mode == proxy.ModeLocal {
		log.Info("pqtunnel starting", "version", buildVersion(), "mode", pc.Mode, "pq", c.Policy.Mode, "profile", c.Profile,
			"groups", hybridtls.GroupNames(c.Policy.Groups), "tunnel", "none: every route joins a route of the same name on this side")
	} else {
		log.Info("pqtunnel starting", "version", buildVersion(), "mode", pc.Mode, "transport", pc.Transport.Name(),
			"pq", pc.TLS.Policy().Mode, "profile", c.Profile, "groups", hybridtls.GroupNames(pc.TLS.Policy().Groups), "identity", pc.TLS.Authenticator().Name())
	}

	if c.Auth != nil {
		warnNoPeers(c.Auth, log)
	}
	if m := c.TLSMaterial; m != nil && len(m.Certificates) > 0 {
		log.Info("tls:// routes serve", "certificates", certificateNames(m), "client_auth", m.ClientCAs != nil)
	}
	if c.KeyLog != "" {
		log.Warn(config.Name("KeyLog")+" is on: TLS secrets of every tunnel are written to the key log, and anyone who reads it can decrypt the traffic", "keylog", c.KeyLog)
	}
	if pc.Transport != nil && transport.UsesUDP(pc.Transport) {
		warnUDPBuffers(log)
	}
	if c.MetricsAddr != "" {
		stop, err := serveMetrics(c.MetricsAddr, e.Handler(), log)
		if err != nil {
			return err
		}
		defer stop()
	}
	stopControl, err := serveControl(c.Control, e.Handler(), log)
	if err != nil {
		return err
	}
	defer stopControl()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	drained := make(chan error, 1)
	stopping := false
	for {
		select {
		case err := <-done:
			if !errors.Is(err, proxy.ErrClosed) {
				return err
			}
			if stopping {
				// Shutdown's only error is PQT_DRAIN_TIMEOUT passing: the
				// engine then closed the streams still open and logged it,
				// which is the variable's meaning, and the process exits 0
				// as after a complete drain.
				<-drained
			}
			return nil
		case s := <-sigs:
			switch {
			case s == syscall.SIGHUP:
				reload(c, pc.TLS, e, log)
				reloadTLSRoutes(c, pc.TLSRoutes, log)
			case stopping:
				log.Warn("second signal: exiting now", "signal", s.String())
				e.Close() // tell peers at once rather than let them time out
				return errors.New("interrupted")
			default:
				stopping = true
				log.Info("shutting down", "signal", s.String(), "drain_timeout", pc.DrainTimeout)
				go func() {
					dctx, cancel := context.WithTimeout(ctx, pc.DrainTimeout)
					defer cancel()
					drained <- e.Shutdown(dctx)
				}()
			}
		}
	}
}

// reload re-reads identity, certificates and pins; on any error the
// material in force stays.
// Live tunnels of peers no longer accepted are closed at once.
func reload(c *config.Config, store *hybridtls.Store, e *proxy.Engine, log *slog.Logger) {
	if store == nil {
		return // no tunnel
	}
	a, err := c.LoadAuth()
	if err == nil {
		err = store.Swap(a)
	}
	if err != nil {
		log.Error("reload failed: keeping the identity and pins in force", "err", err)
		return
	}
	warnNoPeers(a, log)
	// Both counts are logged in every mode, the other mode's as zero.
	ps := a.PeerSet()
	listed := map[auth.Setting]int{ps.Setting: ps.Listed}
	log.Info("reloaded identity and pins", "identity", a.Name(), "peers", listed[auth.SettingPeers], "allow", listed[auth.SettingAllow], "revoked", e.Reauthorize())
}

// reloadTLSRoutes re-reads the certificates and CA bundles of tls://
// routes; on any error the material in force stays. Connections already
// up keep theirs.
func reloadTLSRoutes(c *config.Config, store *tlsroute.Store, log *slog.Logger) {
	if store == nil {
		return
	}
	m, err := c.LoadTLSMaterial()
	if err == nil {
		err = store.Swap(m)
	}
	if err != nil {
		log.Error("reload failed: keeping the certificates of tls:// routes in force", "err", err)
		return
	}
	log.Info("reloaded certificates of tls:// routes", "certificates", certificateNames(m))
}

// certificateNames lists the certificates of tls:// routes for the log.
func certificateNames(m *tlsroute.Material) string {
	names := make([]string, len(m.Certificates))
	for i, cert := range m.Certificates {
		names[i] = tlsroute.Describe(cert.Leaf)
	}
	return strings.Join(names, ", ")
}

// warnNoPeers says loudly when the authenticator accepts nobody (an empty
// pins file, or an empty file of allow rules): every peer is refused.
func warnNoPeers(a auth.Authenticator, log *slog.Logger) {
	ps := a.PeerSet()
	if !ps.Nobody {
		return
	}
	if msg := config.EmptyPeerSetWarning(ps.Setting); msg != "" {
		log.Warn(msg)
	}
}

// serveMetrics starts the HTTP server for /metrics, /healthz and /readyz;
// the returned function stops it.
func serveMetrics(addr string, h http.Handler, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", config.Name("Metrics"), err)
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

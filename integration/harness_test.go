package integration

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/wire"
)

// testContext returns a context for one test: at most d long, and ending
// well before 'go test -timeout' would panic, so that the processes a test
// started are killed and their logs shown rather than orphaned.
func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	deadline := time.Now().Add(d)
	if td, ok := t.Deadline(); ok && td.Add(-10*time.Second).Before(deadline) {
		deadline = td.Add(-10 * time.Second)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}

// within returns a child of ctx that ends after d at the latest.
func within(t *testing.T, ctx context.Context, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, d)
	t.Cleanup(cancel)
	return ctx
}

// proc is one child process started by a test. It is killed and waited for
// when the test ends, or earlier if the test's context ends.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout *testutil.Output
	stderr *testutil.Output
	child  *testutil.Proc
	done   <-chan struct{} // closed once the process has exited and its output is in
}

// startProc starts path with args and the environment testutil.ChildEnv(env).
func startProc(t *testing.T, ctx context.Context, name string, env map[string]string, path string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, stdout: &testutil.Output{}, stderr: &testutil.Output{}}
	p.cmd = exec.Command(path, args...)
	p.cmd.Env = testutil.ChildEnv(env)
	p.cmd.Stdout = p.stdout
	p.cmd.Stderr = p.stderr
	// If the test binary dies (a panic on 'go test -timeout'), so does the child.
	child, err := testutil.Start(name, p.cmd, false)
	if err != nil {
		t.Fatal(err)
	}
	p.child, p.done = child, child.Done()
	child.KillWith(ctx)
	t.Cleanup(func() {
		child.Kill()
		out := p.stderr.String()
		if strings.Contains(out, "WARNING: DATA RACE") || strings.Contains(out, "panic: ") {
			t.Errorf("%s reported a data race or panic", name)
		}
		if t.Failed() {
			t.Logf("%s (%s) stderr:\n%s", name, strings.Join(p.cmd.Args, " "), out)
			if s := p.stdout.String(); s != "" {
				t.Logf("%s stdout:\n%s", name, s)
			}
		}
	})
	return p
}

func (p *proc) exited() bool { return p.child.Exited() }

// signal sends sig to the process.
func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s to %s: %v", sig, p.name, err)
	}
}

// wait waits for the process to exit and returns its exit code; it fails
// the test if ctx ends first.
func (p *proc) wait(t *testing.T, ctx context.Context) int {
	t.Helper()
	select {
	case <-p.done:
	case <-ctx.Done():
		t.Fatalf("%s did not exit: %v", p.name, ctx.Err())
	}
	var ee *exec.ExitError
	if err := p.child.Err(); err != nil && !errors.As(err, &ee) {
		t.Fatalf("wait for %s: %v", p.name, err)
	}
	return p.cmd.ProcessState.ExitCode()
}

// logLine is one slog JSON record.
type logLine map[string]any

// str returns attribute k as text ("" when absent).
func (l logLine) str(k string) string {
	v, ok := l[k]
	if !ok {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// parseLogs parses the JSON lines in text, skipping anything else (such as
// a race report).
func parseLogs(text string) []logLine {
	var out []logLine
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var l logLine
		if json.Unmarshal([]byte(line), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// logMatch selects log lines: msg exactly, and each attribute pair exactly.
type logMatch struct {
	msg   string
	attrs []string // key, value, key, value...
}

func msgIs(msg string, attrs ...string) logMatch { return logMatch{msg: msg, attrs: attrs} }

func (m logMatch) match(l logLine) bool {
	if l.str("msg") != m.msg {
		return false
	}
	for i := 0; i+1 < len(m.attrs); i += 2 {
		if l.str(m.attrs[i]) != m.attrs[i+1] {
			return false
		}
	}
	return true
}

func (m logMatch) String() string {
	s := strconv.Quote(m.msg)
	for i := 0; i+1 < len(m.attrs); i += 2 {
		s += fmt.Sprintf(" %s=%q", m.attrs[i], m.attrs[i+1])
	}
	return s
}

// logs returns the process's log lines that match m so far.
func (p *proc) logs(m logMatch) []logLine {
	var out []logLine
	for _, l := range parseLogs(p.stderr.String()) {
		if m.match(l) {
			out = append(out, l)
		}
	}
	return out
}

// awaitLogs waits until n lines match m; it returns early with an error if
// the process exits or ctx ends first.
func (p *proc) awaitLogs(ctx context.Context, n int, m logMatch) ([]logLine, error) {
	for {
		text, changed := p.stderr.Snapshot()
		var got []logLine
		for _, l := range parseLogs(text) {
			if m.match(l) {
				got = append(got, l)
			}
		}
		if len(got) >= n {
			return got, nil
		}
		select {
		case <-changed:
		case <-p.done:
			if text != p.stderr.String() {
				continue // the last words arrived with the exit
			}
			return got, fmt.Errorf("%s exited (%v) after %d of %d log lines %s", p.name, p.child.Err(), len(got), n, m)
		case <-ctx.Done():
			return got, fmt.Errorf("%s: %d of %d log lines %s: %w", p.name, len(got), n, m, ctx.Err())
		}
	}
}

// waitLog waits for one log line matching m and returns it.
func (p *proc) waitLog(t *testing.T, ctx context.Context, m logMatch) logLine {
	t.Helper()
	got, err := p.awaitLogs(ctx, 1, m)
	if err != nil {
		t.Fatal(err)
	}
	return got[0]
}

// waitLogs waits for n log lines matching m and returns them.
func (p *proc) waitLogs(t *testing.T, ctx context.Context, n int, m logMatch) []logLine {
	t.Helper()
	got, err := p.awaitLogs(ctx, n, m)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// waitText waits until the buffer holds substr.
func waitText(t *testing.T, ctx context.Context, p *proc, b *testutil.Output, substr string) string {
	t.Helper()
	for {
		text, changed := b.Snapshot()
		if strings.Contains(text, substr) {
			return text
		}
		select {
		case <-changed:
		case <-p.done:
			if text = b.String(); strings.Contains(text, substr) {
				return text
			}
			t.Fatalf("%s exited (%v) without printing %q", p.name, p.child.Err(), substr)
		case <-ctx.Done():
			t.Fatalf("%s did not print %q: %v", p.name, substr, ctx.Err())
		}
	}
}

// freePort returns a loopback port number free for both TCP and UDP at the
// time of the call, never one returned before in this run.
func freePort(t *testing.T) int { return testutil.Port(t) }

func loopback(port int) string { return testutil.Loopback(port) }

// identity is a pqtunnel identity file and its pin.
type identity struct {
	path string
	pin  string
}

var (
	identitiesMu sync.Mutex
	identities   = map[string]identity{}
)

// identityNamed returns the identity called name, creating it on first use
// with 'pqtunnel keygen -o FILE'.
func identityNamed(t *testing.T, name string) identity {
	t.Helper()
	identitiesMu.Lock()
	defer identitiesMu.Unlock()
	if id, ok := identities[name]; ok {
		return id
	}
	path := filepath.Join(identityDir, name+".id")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pin, err := testutil.Keygen(ctx, pqtunnelBin, path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pin, "pqt1_") || strings.ContainsAny(pin, " \n") {
		t.Fatalf("pqtunnel keygen printed %q, want a pin alone", pin)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("keygen wrote no file: %v", err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Fatalf("keygen wrote %s with mode %#o, want 0600", path, perm)
	}
	id := identity{path: path, pin: pin}
	identities[name] = id
	return id
}

// origin is a TCP server in the test process standing in for the service
// behind the tunnel. It counts the connections it accepts.
type origin struct {
	ln      net.Listener
	mu      sync.Mutex
	accepts int
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

// startOrigin serves each connection with handle on a loopback port until
// the test ends.
func startOrigin(t *testing.T, handle func(c *net.TCPConn)) *origin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("origin: %v", err)
	}
	o := &origin{ln: ln, conns: map[net.Conn]bool{}}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			o.mu.Lock()
			o.accepts++
			o.conns[c] = true
			o.mu.Unlock()
			o.wg.Add(1)
			go func() {
				defer o.wg.Done()
				defer func() {
					o.mu.Lock()
					delete(o.conns, c)
					o.mu.Unlock()
					_ = c.Close() // done with it
				}()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close() // stops the accept loop
		o.mu.Lock()
		for c := range o.conns {
			_ = c.Close() // unblocks handlers of a failed test
		}
		o.mu.Unlock()
		o.wg.Wait()
	})
	return o
}

func (o *origin) addr() string { return o.ln.Addr().String() }

func (o *origin) acceptCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.accepts
}

// echo copies a connection back to itself and passes the client's FIN on.
func echo(c *net.TCPConn) {
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute)) // a stuck test ends anyway
	if _, err := io.Copy(c, c); err == nil {
		_ = c.CloseWrite() // errors show up as a short echo at the client
	}
}

func startEcho(t *testing.T) *origin { return startOrigin(t, echo) }

// side is one running pqtunnel process and what it listens on.
type side struct {
	*proc
	tunnelAddr string            // listen side: the tunnel address
	forward    map[string]string // dial side: route name ("" unnamed) to address
}

// sideEnv is the environment common to both sides: JSON logs, a transport
// on both sides, identity and peers; extra overrides it.
func sideEnv(mode, transport string, self, peer identity, extra map[string]string) map[string]string {
	env := map[string]string{
		"PQT_MODE":       mode,
		"PQT_LOG_FORMAT": "json",
		"PQT_IDENTITY":   self.path,
		"PQT_PEERS":      peer.pin,
	}
	if transport != "" {
		env["PQT_TRANSPORT"] = transport
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// addrInUse reports whether a process failed because a port was taken
// after freePort probed it.
func addrInUse(p *proc) bool {
	return p.exited() && strings.Contains(p.stderr.String(), "address already in use")
}

// startListen starts a listen side on port (0 picks one) and waits until
// its tunnel listeners are up. transport "" means the default (auto).
func startListen(t *testing.T, ctx context.Context, port int, transport string, extra map[string]string) *side {
	t.Helper()
	return startListenOf(t, ctx, pqtunnelBin, port, transport, extra)
}

// startListenOf is startListen of the binary bin.
func startListenOf(t *testing.T, ctx context.Context, bin string, port int, transport string, extra map[string]string) *side {
	t.Helper()
	self, peer := identityNamed(t, "listen"), identityNamed(t, "dial")
	listeners := 1
	if transport == "" || transport == "auto" {
		listeners = 2
	}
	for attempt := 0; ; attempt++ {
		p := port
		if p == 0 {
			p = freePort(t)
		}
		env := sideEnv("listen", transport, self, peer, extra)
		env["PQT_TUNNEL"] = loopback(p)
		pr := startProc(t, ctx, "listen side", env, bin)
		_, err := pr.awaitLogs(within(t, ctx, 15*time.Second), listeners, msgIs("tunnel listening"))
		if err == nil {
			return &side{proc: pr, tunnelAddr: loopback(p)}
		}
		if !addrInUse(pr) || attempt == 2 {
			t.Fatal(err)
		}
	}
}

// startDial starts a dial side connecting to tunnelAddr with one forward
// listener per route (nil routes: one unnamed route) and waits until they
// are up. It does not wait for the tunnel.
func startDial(t *testing.T, ctx context.Context, tunnelAddr, transport string, routes []string, extra map[string]string) *side {
	t.Helper()
	return startDialOf(t, ctx, pqtunnelBin, tunnelAddr, transport, routes, extra)
}

// startDialOf is startDial of the binary bin.
func startDialOf(t *testing.T, ctx context.Context, bin string, tunnelAddr, transport string, routes []string, extra map[string]string) *side {
	t.Helper()
	self, peer := identityNamed(t, "dial"), identityNamed(t, "listen")
	if routes == nil {
		routes = []string{""}
	}
	for attempt := 0; ; attempt++ {
		forward := map[string]string{}
		var spec []string
		for _, r := range routes {
			addr := loopback(freePort(t))
			forward[r] = addr
			if r == "" {
				spec = append(spec, addr)
			} else {
				spec = append(spec, r+"="+addr)
			}
		}
		env := sideEnv("dial", transport, self, peer, extra)
		env["PQT_TUNNEL"] = tunnelAddr
		env["PQT_FORWARD"] = strings.Join(spec, ",")
		pr := startProc(t, ctx, "dial side", env, bin)
		_, err := pr.awaitLogs(within(t, ctx, 15*time.Second), len(routes), msgIs("forwarding"))
		if err == nil {
			return &side{proc: pr, forward: forward}
		}
		if !addrInUse(pr) || attempt == 2 {
			t.Fatal(err)
		}
	}
}

// pair is a listen side and a dial side with a tunnel between them.
type pair struct {
	listen, dial *side
}

// pairOptions configures startPair.
type pairOptions struct {
	transport string   // PQT_TRANSPORT on both sides: quic or tcp
	target    string   // the listen side's PQT_TARGET
	routes    []string // the dial side's forward routes; nil is one unnamed route
	listenEnv map[string]string
	dialEnv   map[string]string
	binary    string // the binary both sides run; "" is pqtunnelBin
}

// startPair starts both sides and waits until each logs a post-quantum
// tunnel connection over the requested transport.
func startPair(t *testing.T, ctx context.Context, o pairOptions) *pair {
	t.Helper()
	lenv := map[string]string{"PQT_TARGET": o.target}
	for k, v := range o.listenEnv {
		lenv[k] = v
	}
	bin := cmp.Or(o.binary, pqtunnelBin)
	l := startListenOf(t, ctx, bin, 0, o.transport, lenv)
	d := startDialOf(t, ctx, bin, l.tunnelAddr, o.transport, o.routes, o.dialEnv)
	// Wait for every connection the dial side keeps, so that later counts
	// of tunnel log lines are stable.
	n := 2 // the PQT_CONNECTIONS default
	if v, ok := o.dialEnv["PQT_CONNECTIONS"]; ok {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("PQT_CONNECTIONS=%q: %v", v, err)
		}
	}
	connected := msgIs("tunnel connected", "transport", o.transport, "group", "X25519MLKEM768")
	wctx := within(t, ctx, 20*time.Second)
	d.waitLogs(t, wctx, n, connected)
	l.waitLogs(t, wctx, n, connected)
	return &pair{listen: l, dial: d}
}

// dialClient connects to addr with ctx's deadline on the connection.
func dialClient(ctx context.Context, addr string) (*net.TCPConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl) // a failure shows up as an I/O error
	}
	return c.(*net.TCPConn), nil
}

// echoExact sends payload through addr to an echo origin, half-closes, and
// checks that exactly payload comes back followed by EOF.
func echoExact(ctx context.Context, addr string, payload []byte) error {
	return echoExactOn(ctx, "tcp", addr, payload)
}

// echoExactOn is echoExact over a "tcp" or "unix" client connection.
func echoExactOn(ctx context.Context, network, addr string, payload []byte) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl) // a failure shows up as an I/O error
	}
	c := nc.(interface {
		net.Conn
		CloseWrite() error
	})
	defer c.Close()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(c)
	if rerr != nil {
		_ = c.Close() // unblocks the writer
		<-werr
		return fmt.Errorf("read after %d of %d bytes: %w", len(got), len(payload), rerr)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return sameBytes(got, payload)
}

// sameBytes describes how got differs from want, or returns nil.
func sameBytes(got, want []byte) error {
	if bytes.Equal(got, want) {
		return nil
	}
	n := min(len(got), len(want))
	i := 0
	for i < n && got[i] == want[i] {
		i++
	}
	return fmt.Errorf("got %d bytes, want %d; first difference at offset %d", len(got), len(want), i)
}

// expectClosedPromptly connects to addr and checks that the connection is
// closed (EOF or reset) within limit rather than left hanging.
func expectClosedPromptly(ctx context.Context, addr string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	c, err := dialClient(ctx, addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil // accepted and reset before the dialer looked: closed promptly indeed
	}
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	// A client that speaks first must not change the outcome.
	_, _ = c.Write([]byte("hello?\n")) // a reset may already have arrived
	n, err := io.Copy(io.Discard, c)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("connection to %s still open after %s", addr, limit)
	case n > 0:
		return fmt.Errorf("connection to %s delivered %d bytes, want none", addr, n)
	}
	return nil
}

// randomBytes returns n pseudo-random bytes from seed, so that each stream
// carries its own distinct data.
func randomBytes(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b) // ChaCha8.Read never fails
	return b
}

// transports runs f once per tunnel transport as subtests.
func transports(t *testing.T, f func(t *testing.T, transport string)) {
	for _, tr := range []string{"quic", "tcp"} {
		t.Run(tr, func(t *testing.T) { f(t, tr) })
	}
}

// dialStore is a Store for the "dial" identity that accepts the "listen"
// identity's pin, with the default strict policy: a Go client that passes
// every check, for tests that then misbehave at a later step.
func dialStore(t *testing.T) *hybridtls.Store {
	t.Helper()
	listenPin, err := pinned.ParsePin(identityNamed(t, "listen").pin)
	if err != nil {
		t.Fatal(err)
	}
	store, err := hybridtls.NewStore(
		hybridtls.Policy{Mode: hybridtls.Strict, Groups: hybridtls.DefaultGroups, ALPN: wire.ALPN},
		&pinned.Authenticator{Identity: dialIdentity(t), Peers: []pinned.Pin{listenPin}})
	if err != nil {
		t.Fatal(err)
	}
	return store
}

func dialIdentity(t *testing.T) *pinned.Identity {
	t.Helper()
	id, err := pinned.LoadIdentityFile(identityNamed(t, "dial").path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// classicalClient is a TLS 1.3 client config with a valid identity that
// offers only classical X25519.
func classicalClient(t *testing.T) *tls.Config {
	t.Helper()
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
		Certificates:       []tls.Certificate{dialIdentity(t).Certificate},
		InsecureSkipVerify: true, // the listen side's identity is not what is tested
		NextProtos:         []string{wire.ALPN},
	}
}

// needTool returns the path of the program name, looked up in PATH and then
// in /usr/sbin (where Debian puts daemons such as nginx), or fails the test
// naming the Debian package that provides it; scripts/test-deps installs
// every one of them.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err == nil {
		return bin
	}
	if sbin := "/usr/sbin/" + name; fileExists(sbin) {
		return sbin
	}
	t.Fatalf("%s is not installed: install it with apt-get install -y %s (scripts/test-deps does this): %v", name, pkg, err)
	return ""
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

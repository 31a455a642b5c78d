//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/integration/wan"
	"github.com/pqtunnel/pqtunnel/integration/wan/netem"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// The tests in this file run the real binary in the two network namespaces
// of a wan.Bed: the dial side in A, the listen side and an echo origin in B,
// an emulated link between them whose paths the tests break. They need root
// and skip without it.

// Addresses inside the namespaces, which nothing else uses.
const (
	wanTunnel  = wan.AddrB + ":8443"
	wanForward = "127.0.0.1:7000"
	wanDialMet = "127.0.0.1:9101"
	wanListMet = "127.0.0.1:9100"
)

// slack is what a busy 2-core machine running the race detector may add to
// a deadline the product promises.
const slack = 1500 * time.Millisecond

// wanBed is a bed, its echo origin in B, and the sides started on it.
type wanBed struct {
	*wan.Bed
	origin string // the echo origin's address inside B
}

// newWANBed builds a bed with a 20 ms RTT link and an echo origin in B, or
// skips the test when the bed cannot be built here (not root).
func newWANBed(t *testing.T, ctx context.Context) *wanBed {
	t.Helper()
	if err := wan.Available(); err != nil {
		t.Skipf("skipping WAN test: %v", err)
	}
	bed, err := wan.New(ctx, "it")
	if err != nil {
		t.Fatalf("WAN bed: %v", err)
	}
	t.Cleanup(func() {
		if err := bed.Close(); err != nil {
			t.Errorf("close WAN bed: %v", err)
		}
	})
	bed.Link.SetBoth(netem.Config{Delay: 10 * time.Millisecond, RateBits: 200e6})
	ln, err := bed.B.Listen(ctx, &net.ListenConfig{}, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("origin in B: %v", err)
	}
	// Registered after the bed's cleanup: runs before it, so the namespace is free.
	testutil.Serve(t, ln, func(c net.Conn) { echo(c.(*net.TCPConn)) })
	return &wanBed{Bed: bed, origin: ln.Addr().String()}
}

// startIn starts pqtunnel inside ns with env (PQT_LOG_FORMAT=json added).
func startIn(t *testing.T, ctx context.Context, ns *wan.Namespace, name string, env map[string]string) *proc {
	t.Helper()
	env["PQT_LOG_FORMAT"] = "json"
	return startProc(t, ctx, name, env, "ip", "netns", "exec", ns.Name, pqtunnelBin)
}

// listenIn starts a listen side in B serving the echo origin.
func (b *wanBed) listenIn(t *testing.T, ctx context.Context, transport string, extra map[string]string) *proc {
	t.Helper()
	env := map[string]string{
		"PQT_MODE": "listen", "PQT_TUNNEL": wanTunnel, "PQT_TARGET": b.origin, "PQT_TRANSPORT": transport,
		"PQT_IDENTITY": identityNamed(t, "listen").path, "PQT_PEERS": identityNamed(t, "dial").pin,
		"PQT_METRICS": wanListMet,
	}
	for k, v := range extra {
		env[k] = v
	}
	p := startIn(t, ctx, b.B, "listen side", env)
	n := 1
	if transport == "auto" {
		n = 2
	}
	p.waitLogs(t, within(t, ctx, 15*time.Second), n, msgIs("tunnel listening"))
	return p
}

// dialIn starts a dial side in A forwarding wanForward to the listen side.
func (b *wanBed) dialIn(t *testing.T, ctx context.Context, transport string, extra map[string]string) *proc {
	t.Helper()
	env := map[string]string{
		"PQT_MODE": "dial", "PQT_TUNNEL": wanTunnel, "PQT_FORWARD": wanForward, "PQT_TRANSPORT": transport,
		"PQT_IDENTITY": identityNamed(t, "dial").path, "PQT_PEERS": identityNamed(t, "listen").pin,
		"PQT_METRICS": wanDialMet,
	}
	for k, v := range extra {
		env[k] = v
	}
	p := startIn(t, ctx, b.A, "dial side", env)
	p.waitLog(t, within(t, ctx, 15*time.Second), msgIs("forwarding"))
	return p
}

// startSides starts a listen side in B and a dial side in A on transport,
// each with its extra variables, and waits until both have their two
// tunnel connections up (over QUIC when transport is auto).
func (b *wanBed) startSides(t *testing.T, ctx context.Context, transport string, listenExtra, dialExtra map[string]string) (l, d *proc) {
	t.Helper()
	l = b.listenIn(t, ctx, transport, listenExtra)
	d = b.dialIn(t, ctx, transport, dialExtra)
	over := transport
	if transport == "auto" {
		over = "quic"
	}
	up := msgIs("tunnel connected", "transport", over)
	d.waitLogs(t, within(t, ctx, 20*time.Second), 2, up)
	l.waitLogs(t, within(t, ctx, 20*time.Second), 2, up)
	return l, d
}

// echoFromA sends payload through the dial side's forward route from
// inside A and checks that exactly it comes back.
func (b *wanBed) echoFromA(ctx context.Context, payload []byte) error {
	c, err := b.A.Dial(ctx, "tcp", wanForward)
	if err != nil {
		return fmt.Errorf("dial %s in A: %w", wanForward, err)
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	if dl, ok := ctx.Deadline(); ok {
		_ = tc.SetDeadline(dl) // a failure shows as an I/O error
	}
	if _, err := tc.Write(payload); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	_ = tc.CloseWrite() // a failure shows as a short echo
	got, err := io.ReadAll(tc)
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", len(got), err)
	}
	return sameBytes(got, payload)
}

// clientOutcome connects a client in A that sends a line and reports how it
// ended and when: "answered" (the echo came back), "refused" (EOF or reset
// before any byte), or an error after limit.
func (b *wanBed) clientOutcome(ctx context.Context, limit time.Duration) (string, time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	c, err := b.A.Dial(ctx, "tcp", wanForward)
	if err != nil {
		return "", 0, fmt.Errorf("dial %s in A: %w", wanForward, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl) // a connection left hanging shows as a timeout
	msg := []byte("are you there?\n")
	_, _ = c.Write(msg) // a reset may already be there; the read says
	buf := make([]byte, len(msg))
	n, err := io.ReadFull(c, buf)
	took := time.Since(start)
	switch {
	case err == nil && string(buf) == string(msg):
		return "answered", took, nil
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || (errors.Is(err, io.ErrUnexpectedEOF) && n == 0):
		return "refused", took, nil
	case errors.Is(err, context.DeadlineExceeded) || isTimeoutErr(err):
		return "", took, fmt.Errorf("client still waiting after %s", took.Round(time.Millisecond))
	}
	return "", took, fmt.Errorf("client read %q: %w", buf[:n], err)
}

// expectRefused checks that a client arriving now (when, in the test's
// words) is refused within PQT_KEEPALIVE_TIMEOUT (3 s) and slack.
func (b *wanBed) expectRefused(t *testing.T, ctx context.Context, when string) {
	t.Helper()
	how, took, err := b.clientOutcome(ctx, 3*time.Second+slack)
	switch {
	case err != nil:
		t.Errorf("client arriving %s: %v", when, err)
	case how != "refused":
		t.Errorf("client arriving %s was %s, want refused", when, how)
	default:
		t.Logf("client arriving %s refused after %s", when, took.Round(time.Millisecond))
	}
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// wanGet fetches path from the metrics server of the process listening on
// addr inside ns and returns the body of a 200 answer.
func wanGet(ctx context.Context, ns *wan.Namespace, addr, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := ns.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	return string(body), nil
}

// wanMetric reads one counter or gauge of the process whose metrics listen
// on addr inside ns; labels are name, value pairs.
func wanMetric(ctx context.Context, ns *wan.Namespace, addr, name string, labels ...string) (float64, error) {
	body, err := wanGet(ctx, ns, addr, "/metrics")
	if err != nil {
		return 0, err
	}
	m, err := metParse(body)
	if err != nil {
		return 0, err
	}
	v, _ := m.value(name, labels...)
	return v, nil
}

// logTime is when a log line was written.
func logTime(t *testing.T, l logLine) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, l.str("time"))
	if err != nil {
		t.Fatalf("log time %q: %v", l.str("time"), err)
	}
	return at
}

// disconnectedWithin waits for n "tunnel disconnected" lines of p after
// since, and fails if one came later than limit after it or gave a reason
// other than those listed ("a|b").
func disconnectedWithin(t *testing.T, ctx context.Context, p *proc, n int, reasons string, since time.Time, limit time.Duration) {
	t.Helper()
	gone := msgIs("tunnel disconnected")
	before := 0 // lines of earlier disconnections (a move's)
	for _, l := range p.logs(gone) {
		if logTime(t, l).Before(since) {
			before++
		}
	}
	lines, err := p.awaitLogs(within(t, ctx, limit+10*time.Second), before+n, gone)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines[len(lines)-n:] {
		d := logTime(t, l).Sub(since)
		t.Logf("%s: tunnel %s (%s) disconnected %s after the fault, reason=%s err=%s", p.name, l.str("tunnel"), l.str("transport"), d.Round(time.Millisecond), l.str("reason"), truncateText(l.str("err"), 200))
		if !slices.Contains(strings.Split(reasons, "|"), l.str("reason")) {
			t.Errorf("%s: tunnel %s disconnected with reason %q, want %s", p.name, l.str("tunnel"), l.str("reason"), reasons)
		}
		if d > limit {
			t.Errorf("%s: tunnel %s disconnected %s after the fault, want within %s", p.name, l.str("tunnel"), d.Round(time.Millisecond), limit)
		}
	}
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// TestWANAsymmetricUDPBlackholeFallsBackToTCP drops the dial side's UDP
// packets to the listen side while the listen side's still arrive: both
// sides declare their QUIC tunnels dead within PQT_KEEPALIVE_TIMEOUT (3 s)
// although packets keep arriving at the dial side, a client arriving
// meanwhile is answered or refused within that time rather than left
// hanging, and the dial side is carried by TCP within PQT_FALLBACK_TIMEOUT
// after that.
func TestWANAsymmetricUDPBlackholeFallsBackToTCP(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	b := newWANBed(t, ctx)
	l, d := b.startSides(t, ctx, "auto", nil, nil)
	if err := b.echoFromA(within(t, ctx, 10*time.Second), randomBytes(1601, 256<<10)); err != nil {
		t.Fatalf("traffic before the blackhole: %v", err)
	}

	b.Link.Set(netem.AtoB, netem.Config{Delay: 10 * time.Millisecond, RateBits: 200e6, BlackholeUDP: true})
	fault := time.Now()
	outcome := make(chan error, 1)
	go func() {
		// A client arriving just after the path died.
		time.Sleep(300 * time.Millisecond) // arrive on the silently dead tunnel
		how, took, err := b.clientOutcome(ctx, 3*time.Second+slack)
		if err == nil {
			t.Logf("client arriving 300ms into the blackhole: %s after %s", how, took.Round(time.Millisecond))
		}
		outcome <- err
	}()
	disconnectedWithin(t, ctx, d, 2, "keepalive_lost", fault, 3*time.Second+slack)
	disconnectedWithin(t, ctx, l, 2, "keepalive_lost", fault, 3*time.Second+slack)
	if err := <-outcome; err != nil {
		t.Errorf("client arriving during the blackhole: %v", err)
	}

	tcpUp := msgIs("tunnel connected", "transport", "tcp")
	lines := d.waitLogs(t, within(t, ctx, 20*time.Second), 2, tcpUp)
	for _, ln := range lines {
		dt := logTime(t, ln).Sub(fault)
		t.Logf("dial side: tunnel %s on tcp %s after the blackhole began", ln.str("tunnel"), dt.Round(time.Millisecond))
		if limit := 3*time.Second + 3*time.Second + 2*slack; dt > limit {
			t.Errorf("tunnel %s on tcp %s after the blackhole began, want within %s (keep-alive timeout + fallback timeout)", ln.str("tunnel"), dt.Round(time.Millisecond), limit)
		}
	}
	if n := len(d.logs(msgIs("quic handshake timed out, falling back to tcp"))); n == 0 {
		t.Error("the dial side did not log why it fell back")
	}
	if err := b.echoFromA(within(t, ctx, 10*time.Second), randomBytes(1602, 256<<10)); err != nil {
		t.Fatalf("traffic over the fallback: %v", err)
	}
	v, err := wanMetric(ctx, b.A, wanDialMet, "pqtunnel_tunnel_disconnects_total", "transport", "quic", "reason", "keepalive_lost")
	if err != nil || v < 2 {
		t.Errorf("dial side pqtunnel_tunnel_disconnects_total{transport=quic,reason=keepalive_lost} = %v (%v), want at least 2", v, err)
	}
}

// TestWANBlackholeDetectedPromptly blackholes the whole link: on each
// transport both sides declare their tunnels dead (keepalive_lost) within
// PQT_KEEPALIVE_TIMEOUT, a client arriving meanwhile is refused within it,
// and once the path returns the dial side is back; before that, a slow
// path with a full queue (2 Mbit/s, 200 ms RTT) carrying a bulk upload
// has no tunnel declared dead (over tcp the dial side may move its
// tunnels to new connections for the longer RTT).
func TestWANBlackholeDetectedPromptly(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 2*time.Minute)
		b := newWANBed(t, ctx)
		l, d := b.startSides(t, ctx, transport, nil, nil)
		up := msgIs("tunnel connected", "transport", transport)

		slow := netem.Config{Delay: 100 * time.Millisecond, RateBits: 2e6, QueueBytes: 256 << 10}
		b.Link.SetBoth(slow)
		start := time.Now()
		if err := b.echoFromA(within(t, ctx, 60*time.Second), randomBytes(1603, 1<<20)); err != nil {
			t.Fatalf("bulk over the slow path: %v", err)
		}
		t.Logf("1 MiB echoed over 2 Mbit/s, 200 ms RTT in %s", time.Since(start).Round(time.Millisecond))
		for _, p := range []*proc{d, l} {
			for _, reason := range []string{"keepalive_lost", "idle_timeout"} {
				if n := len(p.logs(msgIs("tunnel disconnected", "reason", reason))); n != 0 {
					t.Fatalf("%s: %d tunnels declared dead (%s) on a slow but live path", p.name, n, reason)
				}
			}
		}
		// Tunnels moved for the longer RTT are closed before the fault.
		if moves := len(d.logs(msgIs("tunnel path's RTT grew past the one its connection came up over: moving to a new connection"))); moves > 0 {
			t.Logf("dial side moved %d tunnels to new connections on the slow path", moves)
			d.waitLogs(t, within(t, ctx, 10*time.Second), moves, msgIs("tunnel disconnected", "reason", "moved"))
			l.waitLogs(t, within(t, ctx, 10*time.Second), moves, msgIs("tunnel disconnected"))
			d.waitLogs(t, within(t, ctx, 10*time.Second), 2+moves, up)
		}

		b.Link.SetBoth(netem.Config{Delay: 10 * time.Millisecond, Blackhole: true})
		fault := time.Now()
		b.expectRefused(t, ctx, "during the blackhole")
		disconnectedWithin(t, ctx, d, 2, "keepalive_lost", fault, 3*time.Second+slack)
		disconnectedWithin(t, ctx, l, 2, "keepalive_lost", fault, 3*time.Second+slack)

		b.Link.SetBoth(netem.Config{Delay: 10 * time.Millisecond, RateBits: 200e6})
		back := time.Now()
		d.waitLogs(t, within(t, ctx, 30*time.Second), len(d.logs(up))+2, up)
		t.Logf("dial side back %s after the path returned", time.Since(back).Round(time.Millisecond))
		if err := b.echoFromA(within(t, ctx, 10*time.Second), randomBytes(1604, 64<<10)); err != nil {
			t.Fatalf("traffic after the path returned: %v", err)
		}
	})
}

// TestWANTCPTunnelWhosePongWasLostIsDeclaredDeadPromptly loses the dial
// side's TCP data for a moment while its kernel's acknowledgements still
// pass: the listen side's ping is acknowledged but its pong never comes,
// so nothing of the listen side's is in flight when the whole link then
// goes dark. Both sides still declare their tunnels dead within
// PQT_KEEPALIVE_TIMEOUT of the blackhole, not when the lost pong's wait
// ends or the idle timeout runs out.
func TestWANTCPTunnelWhosePongWasLostIsDeclaredDeadPromptly(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	b := newWANBed(t, ctx)
	l, d := b.startSides(t, ctx, "tcp", nil, nil)
	if err := b.echoFromA(within(t, ctx, 10*time.Second), randomBytes(1606, 64<<10)); err != nil {
		t.Fatalf("traffic before the fault: %v", err)
	}

	link := netem.Config{Delay: 10 * time.Millisecond, RateBits: 200e6}
	pongsLost := link
	pongsLost.BlackholeTCPData = true
	b.Link.Set(netem.AtoB, pongsLost)
	// Two probe intervals (PQT_KEEPALIVE_TIMEOUT/4): the listen side pings
	// in between, and the dial side has not yet noticed its own data lost.
	time.Sleep(1500 * time.Millisecond)
	b.Link.SetBoth(netem.Config{Delay: 10 * time.Millisecond, Blackhole: true})
	fault := time.Now()
	disconnectedWithin(t, ctx, l, 2, "keepalive_lost", fault, 3*time.Second+slack)
	disconnectedWithin(t, ctx, d, 2, "keepalive_lost", fault, 3*time.Second+slack)

	b.Link.SetBoth(link)
	d.waitLogs(t, within(t, ctx, 30*time.Second), 4, msgIs("tunnel connected", "transport", "tcp"))
	if err := b.echoFromA(within(t, ctx, 10*time.Second), randomBytes(1607, 64<<10)); err != nil {
		t.Fatalf("traffic after the path returned: %v", err)
	}
}

// TestWANListenSideKilled kills the listen side with SIGKILL. A client
// arriving at once on the dead tunnel is refused within
// PQT_KEEPALIVE_TIMEOUT (QUIC) or at once (TCP: the kernel closes the dead
// process's sockets). With the keep-alive timeout made long, a listen side
// restarted at once resets the old QUIC connections with a stateless reset
// (its key derived from the identity), so the dial side reconnects about
// one round trip after the restart instead of after a timeout.
func TestWANListenSideKilled(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 2*time.Minute)
		b := newWANBed(t, ctx)
		l, d := b.startSides(t, ctx, transport, nil, nil)

		l.signal(t, syscall.SIGKILL)
		l.wait(t, within(t, ctx, 5*time.Second))
		killed := time.Now()
		b.expectRefused(t, ctx, "after kill -9")
		want := "keepalive_lost"
		if transport == "tcp" {
			want = "peer_closed|connection_reset" // the kernel closes the dead process's sockets
		}
		disconnectedWithin(t, ctx, d, 2, want, killed, 3*time.Second+slack)
	})

	t.Run("quic stateless reset after restart", func(t *testing.T) {
		ctx := testContext(t, 2*time.Minute)
		b := newWANBed(t, ctx)
		// Long timeouts: only a stateless reset can end the old tunnels soon.
		long := map[string]string{"PQT_KEEPALIVE_TIMEOUT": "30s", "PQT_IDLE_TIMEOUT": "30s"}
		l, d := b.startSides(t, ctx, "quic", long, long)
		up := msgIs("tunnel connected", "transport", "quic")
		l.signal(t, syscall.SIGKILL)
		l.wait(t, within(t, ctx, 5*time.Second))
		l2 := b.listenIn(t, ctx, "quic", long)
		restarted := time.Now()
		// Probes go out every PQT_KEEPALIVE (2 s); the first one after the
		// restart draws the reset.
		disconnectedWithin(t, ctx, d, 2, "stateless_reset", restarted, 2*time.Second+slack)
		d.waitLogs(t, within(t, ctx, 10*time.Second), 4, up)
		l2.waitLogs(t, within(t, ctx, 10*time.Second), 2, up)
		t.Logf("dial side reconnected %s after the restart", time.Since(restarted).Round(time.Millisecond))
		if err := b.echoFromA(within(t, ctx, 10*time.Second), randomBytes(1605, 64<<10)); err != nil {
			t.Fatalf("traffic after the restart: %v", err)
		}
		v, err := wanMetric(ctx, b.A, wanDialMet, "pqtunnel_tunnel_disconnects_total", "transport", "quic", "reason", "stateless_reset")
		if err != nil || v != 2 {
			t.Errorf("dial side pqtunnel_tunnel_disconnects_total{transport=quic,reason=stateless_reset} = %v (%v), want 2", v, err)
		}
	})
}

// TestWANDisconnectReasons stops the listen side gracefully on each
// transport: it logs its tunnels as closed for shutdown, the dial side
// logs them closed by the peer, and both count them by reason.
func TestWANDisconnectReasons(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, time.Minute)
		b := newWANBed(t, ctx)
		l, d := b.startSides(t, ctx, transport, map[string]string{"PQT_DRAIN_TIMEOUT": "1s"}, nil)
		// The listen side's count, before it exits.
		stopped := time.Now()
		l.signal(t, syscall.SIGTERM)
		disconnectedWithin(t, ctx, l, 2, "shutdown", stopped, 5*time.Second)
		disconnectedWithin(t, ctx, d, 2, "peer_closed", stopped, 5*time.Second)
		if code := l.wait(t, within(t, ctx, 10*time.Second)); code != 0 {
			t.Errorf("listen side exited %d after SIGTERM, want 0", code)
		}
		v, err := wanMetric(ctx, b.A, wanDialMet, "pqtunnel_tunnel_disconnects_total", "transport", transport, "reason", "peer_closed")
		if err != nil || v < 2 {
			t.Errorf("dial side pqtunnel_tunnel_disconnects_total{transport=%s,reason=peer_closed} = %v (%v), want at least 2", transport, v, err)
		}
	})
}

// TestWANAutoMovesToTCPOnRandomLoss runs auto over 80 ms RTT, first
// without loss, where a bulk stays on QUIC, then with 1 % random loss each
// way, where QUIC's loss-based congestion control moves a few hundred
// KB/s: with traffic on its QUIC tunnel the dial side moves it
// to TCP within the loss watch's window, logs why with the figures, counts
// the move, and the next client's bulk crosses TCP.
func TestWANAutoMovesToTCPOnRandomLoss(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	b := newWANBed(t, ctx)
	clean := netem.Config{Delay: 40 * time.Millisecond, RateBits: 200e6, QueueBytes: 1250 << 10}
	b.Link.SetBoth(clean)
	// One tunnel connection, so that every client takes the one that moves.
	b.listenIn(t, ctx, "auto", nil)
	d := b.dialIn(t, ctx, "auto", map[string]string{"PQT_CONNECTIONS": "1", "PQT_ACCESS_LOG": "on"})
	d.waitLog(t, within(t, ctx, 20*time.Second), msgIs("tunnel connected", "transport", "quic"))
	const moved = "quic loses packets at random, which holds its loss-based congestion control down: moving tunnel to tcp"

	// Without random loss, QUIC's own congestion losses (slow start's
	// overshoot, the full queue) move nothing over 15 s of bulk.
	_ = b.echoFromA(within(t, ctx, 15*time.Second), randomBytes(1607, 256<<20)) // cut short by its deadline
	if n := len(d.logs(msgIs(moved))); n != 0 {
		t.Fatalf("moved to tcp on a path without random loss: %v", d.logs(msgIs(moved)))
	}
	b.Link.SetBoth(netem.Config{Delay: 40 * time.Millisecond, Loss: 0.01, RateBits: 200e6, QueueBytes: 1250 << 10})

	// A client keeps the QUIC tunnel busy both ways until the move.
	bulkCtx, stopBulk := context.WithCancel(ctx)
	bulkDone := make(chan struct{})
	go func() {
		defer close(bulkDone)
		_ = b.echoFromA(bulkCtx, randomBytes(1605, 64<<20)) // cut short by stopBulk
	}()
	start := time.Now()
	line := d.waitLog(t, within(t, ctx, 40*time.Second), msgIs(moved, "from", "quic", "to", "tcp", "reason", "loss"))
	took := logTime(t, line).Sub(start)
	t.Logf("moved to tcp %s after the bulk began: loss=%s%% direction=%s lost=%s of %s packets, %s of %s lossy",
		took.Round(time.Millisecond), line.str("loss"), line.str("direction"), line.str("lost"), line.str("packets"), line.str("lossy_seconds"), line.str("window"))
	// The window is 10 s; QUIC at 1 % loses a few packets a second.
	if limit := 20*time.Second + 2*slack; took > limit {
		t.Errorf("moved %s after the bulk began, want within %s", took.Round(time.Millisecond), limit)
	}
	if loss, err := strconv.ParseFloat(line.str("loss"), 64); err != nil || loss < 0.3 || loss > 3 {
		t.Errorf("move logged loss=%q%%, want about 1", line.str("loss"))
	}
	d.waitLog(t, within(t, ctx, 10*time.Second), msgIs("tunnel connected", "transport", "tcp"))
	stopBulk()
	<-bulkDone

	payload := randomBytes(1606, 8<<20)
	bulkStart := time.Now()
	if err := b.echoFromA(within(t, ctx, 60*time.Second), payload); err != nil {
		t.Fatalf("bulk after the move: %v", err)
	}
	t.Logf("8 MiB echoed after the move in %s", time.Since(bulkStart).Round(time.Millisecond))
	// Its access-log line says which transport carried it (a JSON number
	// decodes as a float64, which str prints as fmt does).
	acc := d.waitLog(t, within(t, ctx, 5*time.Second), msgIs("connection", "bytes_up", fmt.Sprint(float64(len(payload)))))
	if via := acc.str("transport"); via != "tcp" {
		t.Errorf("the bulk after the move was carried over %q, want tcp", via)
	}
	v, err := wanMetric(ctx, b.A, wanDialMet, "pqtunnel_transport_moves_total", "from", "quic", "to", "tcp", "reason", "loss")
	if err != nil || v != 1 {
		t.Errorf("dial side pqtunnel_transport_moves_total{from=quic,to=tcp,reason=loss} = %v (%v), want 1", v, err)
	}
}

// Over a longer path a tcp tunnel's streams start with a larger window, so
// that one stream starts near a fast path's rate, and each side allows its
// peer fewer streams per connection for it, as its status says: 63 at
// 24 ms (2 MiB windows) and 31 at 80 ms (4 MiB), where loopback allows
// 511. 24 ms sits well inside the 2 MiB step (21-33 ms, the top taken a
// quarter lower for the bound of a side's own streams), which an RTT
// measured during a handshake on a busy machine overshoots by a few ms.
// A client's upload crosses either way.
func TestWANTCPStreamWindowsFollowThePathsRTT(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	b := newWANBed(t, ctx)
	for _, tc := range []struct {
		oneWay          time.Duration
		bound, openable int
	}{{12 * time.Millisecond, 63, 63}, {40 * time.Millisecond, 31, 31}} {
		b.Link.SetBoth(netem.Config{Delay: tc.oneWay, RateBits: 200e6})
		l, d := b.startSides(t, ctx, "tcp", nil, nil)
		for _, side := range []struct {
			name string
			ns   *wan.Namespace
			addr string
		}{{"dial side", b.A, wanDialMet}, {"listen side", b.B, wanListMet}} {
			bounds := wanStreamBounds(t, ctx, side.ns, side.addr)
			if len(bounds) != 2 {
				t.Errorf("RTT %s, %s: %d tunnels in /status.json, want 2", 2*tc.oneWay, side.name, len(bounds))
			}
			for _, bd := range bounds {
				if bd != [2]int{tc.bound, tc.openable} {
					t.Errorf("RTT %s, %s: a tunnel's stream bound %d, %d of its own; want %d, %d", 2*tc.oneWay, side.name, bd[0], bd[1], tc.bound, tc.openable)
				}
			}
		}
		if err := b.echoFromA(within(t, ctx, 20*time.Second), randomBytes(1606, 8<<20)); err != nil {
			t.Errorf("RTT %s: an 8 MiB upload: %v", 2*tc.oneWay, err)
		}
		for _, p := range []*proc{d, l} {
			p.signal(t, syscall.SIGKILL)
			p.wait(t, within(t, ctx, 5*time.Second))
		}
	}
}

// wanStreamBounds reads the stream bounds of each tunnel connection from
// the /status.json of the process whose metrics listen on addr inside ns:
// the peer's streams it allows, and its own it opens.
func wanStreamBounds(t *testing.T, ctx context.Context, ns *wan.Namespace, addr string) [][2]int {
	t.Helper()
	body, err := wanGet(within(t, ctx, 10*time.Second), ns, addr, "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Tunnels []struct {
			StreamBound int `json:"stream_bound"`
			OpenBound   int `json:"open_bound"`
		} `json:"tunnels"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status.json: %v", err)
	}
	var bounds [][2]int
	for _, tu := range st.Tunnels {
		bounds = append(bounds, [2]int{tu.StreamBound, tu.OpenBound})
	}
	return bounds
}

// wanTunnelCongestion is the congestion control of each established tunnel
// socket in ns, as ss tells it, sorted: the dial side's sockets, with end
// "dst", or the listen side's, with "src".
func wanTunnelCongestion(t *testing.T, ctx context.Context, ns *wan.Namespace, end string) []string {
	t.Helper()
	out, err := ns.Command(within(t, ctx, 10*time.Second), "ss", "-tinH", "state", "established", end, wanTunnel).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	var names []string
	for _, f := range strings.Fields(string(out)) {
		if f == "bbr" || f == "cubic" || f == "reno" {
			names = append(names, f)
		}
	}
	slices.Sort(names)
	return names
}

// A tunnel that came up over a short path, whose RTT then grew to 80 ms,
// is replaced by the dial side within seconds, on each transport and on
// auto: each connection's successor joins the pool before it is retired as
// moved, the move is logged with both RTTs and counted, and, over tcp, the
// new connections have the windows of the longer path (31 streams each).
// A client held across the move keeps its old connection, past the drain
// timeout, until it leaves; over tcp that connection's socket has left BBR
// for CUBIC on both sides, and its successors' have not. The successors do
// not move again.
func TestWANTunnelMovesToANewConnectionWhenThePathsRTTGrows(t *testing.T) {
	for _, transport := range []string{"tcp", "quic", "auto"} {
		t.Run(transport, func(t *testing.T) {
			ctx := testContext(t, 2*time.Minute)
			b := newWANBed(t, ctx)
			b.Link.SetBoth(netem.Config{RateBits: 200e6})
			// A drain timeout far shorter than the test: a client held
			// across the move must outlive it.
			l, d := b.startSides(t, ctx, transport, nil, map[string]string{"PQT_DRAIN_TIMEOUT": "1s"})
			over := transport
			if transport == "auto" {
				over = "quic"
			}
			if bounds := wanStreamBounds(t, ctx, b.A, wanDialMet); transport == "tcp" && (len(bounds) != 2 || bounds[0] != [2]int{511, 511}) {
				t.Fatalf("stream bounds over the short path %v, want 511, 511 on two tunnels", bounds)
			}
			held, err := b.A.Dial(ctx, "tcp", wanForward)
			if err != nil {
				t.Fatalf("a client held across the move: %v", err)
			}
			defer held.Close()
			heldEcho := func(when string) {
				t.Helper()
				_ = held.SetDeadline(time.Now().Add(5 * time.Second))
				line := []byte("still here\n")
				got := make([]byte, len(line))
				if _, err := held.Write(line); err != nil {
					t.Fatalf("the held client %s: write: %v", when, err)
				}
				if _, err := io.ReadFull(held, got); err != nil || string(got) != string(line) {
					t.Fatalf("the held client %s: read %q: %v", when, got, err)
				}
			}
			heldEcho("before the RTT grew")
			b.Link.SetBoth(netem.Config{Delay: 40 * time.Millisecond, RateBits: 200e6})
			grew := time.Now()
			moved := msgIs("tunnel path's RTT grew past the one its connection came up over: moving to a new connection", "from", over, "to", over, "reason", "rtt_grew")
			lines := d.waitLogs(t, within(t, ctx, 30*time.Second), 2, moved)
			for _, ln := range lines {
				t.Logf("tunnel %s moved to %s %s after the RTT grew: rtt=%s was=%s", ln.str("tunnel"), ln.str("to_tunnel"), logTime(t, ln).Sub(grew).Round(time.Millisecond), ln.str("rtt"), ln.str("was"))
			}
			l.waitLogs(t, within(t, ctx, 10*time.Second), 4, msgIs("tunnel connected", "transport", over))
			// The old connection that carries the held client outlives the
			// drain timeout; once the client leaves, it is closed.
			time.Sleep(2 * time.Second)
			heldEcho("after the move and the drain timeout")
			if n := len(d.logs(msgIs("tunnel disconnected", "reason", "moved"))); n != 1 {
				t.Errorf("%d old connections closed while a client held one of them, want 1", n)
			}
			if transport == "tcp" {
				// The old connection left BBR, which would keep the short
				// path's RTT for 10 s, on the dial side, which sends the
				// uploads, and on the listen side, which sends the
				// downloads; its successors keep it.
				if got := wanTunnelCongestion(t, ctx, b.A, "dst"); !slices.Equal(got, []string{"bbr", "bbr", "cubic"}) {
					t.Errorf("dial side's tunnel sockets run %v, want bbr on the two successors and cubic on the old one", got)
				}
				if got := wanTunnelCongestion(t, ctx, b.B, "src"); !slices.Equal(got, []string{"bbr", "bbr", "cubic"}) {
					t.Errorf("listen side's tunnel sockets run %v, want bbr on the two successors and cubic on the old one", got)
				}
			}
			_ = held.Close()
			d.waitLogs(t, within(t, ctx, 10*time.Second), 2, msgIs("tunnel disconnected", "reason", "moved"))
			if err := b.echoFromA(within(t, ctx, 20*time.Second), randomBytes(1607, 4<<20)); err != nil {
				t.Fatalf("traffic after the move: %v", err)
			}
			if bounds := wanStreamBounds(t, ctx, b.A, wanDialMet); transport == "tcp" && (len(bounds) != 2 || bounds[0] != [2]int{31, 31} || bounds[1] != [2]int{31, 31}) {
				t.Errorf("stream bounds after the move %v, want 31, 31 on two tunnels", bounds)
			}
			v, err := wanMetric(ctx, b.A, wanDialMet, "pqtunnel_transport_moves_total", "from", over, "to", over, "reason", "rtt_grew")
			if err != nil || v != 2 {
				t.Errorf("pqtunnel_transport_moves_total{from=%s,to=%s,reason=rtt_grew} = %v (%v), want 2", over, over, v, err)
			}
			// Four more checks of each successor, over the path they came up over.
			time.Sleep(4 * time.Second)
			if n := len(d.logs(moved)); n != 2 {
				t.Errorf("%d moves, want 2: a successor moved again", n)
			}
		})
	}
}

package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pqtunnel/pqtunnel/hybridtls"
)

// TestNoTunnelRefusesPromptly runs a dial side whose peer is not there yet:
// its clients are closed at once rather than left hanging, it retries with
// growing backoff, and once the listen side starts it connects and carries
// traffic.
func TestNoTunnelRefusesPromptly(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	o := startEcho(t)
	port := freePort(t)
	// One connection, so that the retry_in values come from one backoff.
	d := startDial(t, ctx, loopback(port), "tcp", nil, map[string]string{"PQT_CONNECTIONS": "1"})

	for i := range 3 {
		if err := expectClosedPromptly(ctx, d.forward[""], time.Second); err != nil {
			t.Fatalf("client %d during the outage: %v", i, err)
		}
	}
	d.waitLog(t, within(t, ctx, 5*time.Second), msgIs("client refused", "reason", "no tunnel connection up"))

	fails := d.waitLogs(t, within(t, ctx, 20*time.Second), 5, msgIs("tunnel dial failed", "transport", "tcp", "peer", loopback(port)))
	var waits []time.Duration
	for _, l := range fails[:5] {
		// JSON logs give durations as text ("114ms").
		d, err := time.ParseDuration(l.str("retry_in"))
		if err != nil {
			t.Fatalf("tunnel dial failed without a retry_in duration (%v): %v", err, l)
		}
		waits = append(waits, d)
	}
	for i := 1; i < len(waits); i++ {
		if waits[i] < waits[i-1] {
			t.Errorf("retry_in went down: %v", waits)
		}
	}
	if waits[4] < 4*waits[0] || waits[4] > 5*time.Second {
		t.Errorf("retry_in %v: want exponential growth (5th at least 4 times the 1st) capped at 5s", waits)
	}

	// Still refused promptly after several failed attempts.
	for i := range 2 {
		if err := expectClosedPromptly(ctx, d.forward[""], time.Second); err != nil {
			t.Fatalf("client %d later in the outage: %v", i, err)
		}
	}

	startListen(t, ctx, port, "tcp", map[string]string{"PQT_TARGET": o.addr()})
	start := time.Now()
	d.waitLog(t, within(t, ctx, 7*time.Second), msgIs("tunnel connected", "transport", "tcp", "group", "X25519MLKEM768"))
	t.Logf("connected %s after the listen side started; backoff %v", time.Since(start).Round(time.Millisecond), waits)
	if err := echoExact(within(t, ctx, 20*time.Second), d.forward[""], randomBytes(5, 256<<10)); err != nil {
		t.Fatalf("traffic after the tunnel came up: %v", err)
	}
}

// TestWrongPinRefused runs a listen side that does not list the dial
// side's pin: no tunnel comes up, the listen side says why, and the dial
// side's clients are closed promptly.
func TestWrongPinRefused(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		stranger := identityNamed(t, "stranger")
		l := startListen(t, ctx, 0, transport, map[string]string{"PQT_TARGET": o.addr(), "PQT_PEERS": stranger.pin})
		d := startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_CONNECTIONS": "1"})

		lctx := within(t, ctx, 15*time.Second)
		refused := l.waitLog(t, lctx, msgIs("tunnel handshake refused", "reason", "peer_not_allowed"))
		if dialPin := identityNamed(t, "dial").pin; !bytes.Contains([]byte(refused.str("err")), []byte(dialPin)) {
			t.Errorf("refusal err %q does not name the refused pin %s", refused.str("err"), dialPin)
		}
		d.waitLog(t, lctx, msgIs("tunnel dial failed", "transport", transport))

		for i := range 3 {
			if err := expectClosedPromptly(ctx, d.forward[""], time.Second); err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
		}
		d.waitLog(t, lctx, msgIs("client refused", "reason", "no tunnel connection up"))
		for _, s := range []*side{l, d} {
			if n := len(s.logs(msgIs("tunnel connected"))); n != 0 {
				t.Errorf("%s logged %d tunnel connections with a peer that is not allowed", s.name, n)
			}
		}
		if n := o.acceptCount(); n != 0 {
			t.Errorf("origin accepted %d connections, want 0", n)
		}
	})
}

// classicalOnly matches an error that names the classical X25519 group on
// its own, not as part of X25519MLKEM768.
var classicalOnly = regexp.MustCompile(`X25519([^M]|$)`)

// TestClassicalOnlyPeerRefused connects with a Go TLS client that offers
// only classical X25519 but holds a valid identity: a strict listen side
// refuses it on both transports and says so; a PQT_PQ=prefer listen side
// completes the handshake with X25519.
func TestClassicalOnlyPeerRefused(t *testing.T) {
	classical := func() *tls.Config { return classicalClient(t) }
	checkRefusal := func(t *testing.T, ctx context.Context, l *side) {
		t.Helper()
		line := l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel handshake refused", "reason", "not_post_quantum"))
		if e := line.str("err"); !classicalOnly.MatchString(e) {
			t.Errorf("refusal err %q does not name the classical group X25519 the peer offered", e)
		}
		if n := len(l.logs(msgIs("tunnel connected"))); n != 0 {
			t.Errorf("listen side logged %d tunnel connections", n)
		}
	}

	t.Run("tcp", func(t *testing.T) {
		ctx := testContext(t, 30*time.Second)
		o := startEcho(t)
		l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": o.addr()})
		d := tls.Dialer{Config: classical()}
		c, err := d.DialContext(within(t, ctx, 10*time.Second), "tcp", l.tunnelAddr)
		if err == nil {
			_ = c.Close() // it should not exist
			t.Fatalf("a classical-only TLS client completed a handshake with a strict listen side (group %s)",
				hybridtls.GroupName(c.(*tls.Conn).ConnectionState().CurveID))
		}
		t.Logf("client error: %v", err)
		checkRefusal(t, ctx, l)
		if n := o.acceptCount(); n != 0 {
			t.Errorf("origin accepted %d connections, want 0", n)
		}
	})

	t.Run("quic", func(t *testing.T) {
		ctx := testContext(t, 30*time.Second)
		o := startEcho(t)
		l := startListen(t, ctx, 0, "quic", map[string]string{"PQT_TARGET": o.addr()})
		conn, err := quic.DialAddr(within(t, ctx, 10*time.Second), l.tunnelAddr, classical(), &quic.Config{HandshakeIdleTimeout: 5 * time.Second})
		if err == nil {
			_ = conn.CloseWithError(0, "") // it should not exist
			t.Fatalf("a classical-only QUIC client completed a handshake with a strict listen side (group %s)",
				hybridtls.GroupName(conn.ConnectionState().TLS.CurveID))
		}
		t.Logf("client error: %v", err)
		checkRefusal(t, ctx, l)
		if n := o.acceptCount(); n != 0 {
			t.Errorf("origin accepted %d connections, want 0", n)
		}
	})

	t.Run("prefer accepts X25519", func(t *testing.T) {
		ctx := testContext(t, 30*time.Second)
		o := startEcho(t)
		l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": o.addr(), "PQT_PQ": "prefer"})
		hctx := within(t, ctx, 10*time.Second)
		d := tls.Dialer{Config: classical()}
		c, err := d.DialContext(hctx, "tcp", l.tunnelAddr)
		if err != nil {
			t.Fatalf("PQT_PQ=prefer refused a classical X25519 client: %v", err)
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if g := tc.ConnectionState().CurveID; g != tls.X25519 {
			t.Errorf("negotiated %s, want X25519", hybridtls.GroupName(g))
		}
		// The listen side accepted our certificate and went on to send its
		// session proof, which starts with "PQTP".
		dl, _ := hctx.Deadline()
		_ = tc.SetReadDeadline(dl) // a failure shows as a read error
		magic := make([]byte, 4)
		if _, err := io.ReadFull(tc, magic); err != nil || string(magic) != "PQTP" {
			t.Errorf("after the handshake read %q, %v; want the listen side's proof (PQTP)", magic, err)
		}
		if n := len(l.logs(msgIs("tunnel handshake refused"))); n != 0 {
			t.Errorf("PQT_PQ=prefer logged %d refusals", n)
		}
	})
}

// TestMissingProofRefused completes a genuine TLS handshake with the dial
// side's identity but then sends no session proof, or garbage instead of
// one: the listen side closes the connection within its handshake timeout,
// says why, and never dials the origin.
func TestMissingProofRefused(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	o := startEcho(t)
	// At debug each failure has its own line: past the first per source and
	// reason they are logged at DEBUG only.
	l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": o.addr(), "PQT_HANDSHAKE_TIMEOUT": "1s", "PQT_LOG_LEVEL": "debug"})

	store := dialStore(t)

	cases := []struct {
		name    string
		send    []byte
		reasons []string
	}{
		{"silent", nil, []string{"proof_failed", "timeout"}},
		{"garbage", randomBytes(9, 4000), []string{"proof_failed"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := within(t, ctx, 20*time.Second)
			d := tls.Dialer{Config: store.ClientConfig()}
			c, err := d.DialContext(ctx, "tcp", l.tunnelAddr)
			if err != nil {
				t.Fatalf("TLS handshake with a valid identity: %v", err)
			}
			defer c.Close()
			if g := c.(*tls.Conn).ConnectionState().CurveID; g != tls.X25519MLKEM768 {
				t.Errorf("negotiated %s, want X25519MLKEM768", hybridtls.GroupName(g))
			}
			start := time.Now()
			if tc.send != nil {
				if _, err := c.Write(tc.send); err != nil {
					t.Fatalf("send garbage proof: %v", err)
				}
			}
			_ = c.SetReadDeadline(start.Add(5 * time.Second)) // a failure shows as a read error
			got, err := io.ReadAll(c)
			elapsed := time.Since(start)
			if errors.Is(err, os.ErrDeadlineExceeded) || elapsed > 2500*time.Millisecond {
				t.Fatalf("listen side kept the connection open %s (read %d bytes, %v); want closed within PQT_HANDSHAKE_TIMEOUT=1s", elapsed, len(got), err)
			}
			t.Logf("closed after %s: read %d bytes, %v", elapsed.Round(time.Millisecond), len(got), err)
			if tc.send == nil && !bytes.HasPrefix(got, []byte("PQTP")) {
				t.Errorf("listen side sent %d bytes before closing, want its own proof first (PQTP...)", len(got))
			}

			lines := l.waitLogs(t, within(t, ctx, 5*time.Second), i+1, msgIs("tunnel handshake failed"))
			reason := lines[i].str("reason")
			ok := false
			for _, r := range tc.reasons {
				ok = ok || reason == r
			}
			if !ok {
				t.Errorf("tunnel handshake failed with reason %q, want one of %v", reason, tc.reasons)
			}
		})
	}
	if n := o.acceptCount(); n != 0 {
		t.Errorf("origin accepted %d connections from unauthenticated peers, want 0", n)
	}
	if n := len(l.logs(msgIs("tunnel connected"))); n != 0 {
		t.Errorf("listen side logged %d tunnel connections", n)
	}
}

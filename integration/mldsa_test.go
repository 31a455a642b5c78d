package integration

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/wire"
)

// TestPinnedTunnelAuthenticatesWithMLDSA65 runs a pinned pair on each
// transport: both sides log the tunnel with sig=ML-DSA-65 and pq_auth=true.
func TestPinnedTunnelAuthenticatesWithMLDSA65(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		p := startPair(t, ctx, pairOptions{transport: transport, target: o.addr(), dialEnv: map[string]string{"PQT_CONNECTIONS": "1"}})
		connected := msgIs("tunnel connected", "transport", transport, "sig", "ML-DSA-65", "pq_auth", "true")
		p.dial.waitLog(t, within(t, ctx, 10*time.Second), connected)
		p.listen.waitLog(t, within(t, ctx, 10*time.Second), connected)
		if err := echoExact(within(t, ctx, 10*time.Second), p.dial.forward[""], randomBytes(13, 64<<10)); err != nil {
			t.Fatal(err)
		}
	})
}

// impostorStore is a client Store presenting the dial identity's
// certificate (and so its pin) with the real dial keys only where keep says.
func impostorStore(t *testing.T, keepMLDSA, keepEd25519 bool) *hybridtls.Store {
	t.Helper()
	victim := dialIdentity(t)
	other, err := pinned.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	imp := *victim
	if !keepMLDSA {
		imp.MLDSA = other.MLDSA
	}
	if !keepEd25519 {
		imp.Ed25519 = other.Ed25519
	}
	imp.Certificate.PrivateKey = imp.MLDSA
	listenPin, err := pinned.ParsePin(identityNamed(t, "listen").pin)
	if err != nil {
		t.Fatal(err)
	}
	store, err := hybridtls.NewStore(hybridtls.Policy{Mode: hybridtls.Strict, Groups: hybridtls.DefaultGroups, ALPN: wire.ALPN},
		&pinned.Authenticator{Identity: &imp, Peers: []pinned.Pin{listenPin}})
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// session is one end of an impostor's tunnel connection, on either transport.
type session struct {
	rw    io.ReadWriter
	cs    tls.ConnectionState
	close func()
}

func dialSession(ctx context.Context, transport, addr string, cfg *tls.Config) (*session, error) {
	if transport == "tcp" {
		d := tls.Dialer{Config: cfg}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		tc := c.(*tls.Conn)
		if dl, ok := ctx.Deadline(); ok {
			_ = tc.SetDeadline(dl) // a failure shows as a read error
		}
		return &session{rw: tc, cs: tc.ConnectionState(), close: func() { _ = tc.Close() }}, nil
	}
	conn, err := quic.DialAddr(ctx, addr, cfg, &quic.Config{HandshakeIdleTimeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		_ = conn.CloseWithError(0, "")
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	return &session{rw: st, cs: conn.ConnectionState().TLS, close: func() { _ = conn.CloseWithError(0, "") }}, nil
}

// TestPinnedPeerWithoutMLDSAKeyFailsTheHandshake presents the dial
// identity's certificate signed in CertificateVerify by another ML-DSA key:
// the listen side refuses inside the TLS handshake, before sending its own
// proof, and never dials the origin.
func TestPinnedPeerWithoutMLDSAKeyFailsTheHandshake(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 30*time.Second)
		o := startEcho(t)
		l := startListen(t, ctx, 0, transport, map[string]string{"PQT_TARGET": o.addr()})
		store := impostorStore(t, false, true)
		s, err := dialSession(within(t, ctx, 10*time.Second), transport, l.tunnelAddr, store.ClientConfig())
		if err == nil {
			// TLS 1.3 lets a client finish before the server has checked
			// its certificate; the server's answer is an alert, not a proof.
			defer s.close()
			buf := make([]byte, 4)
			_, err = io.ReadFull(s.rw, buf)
			if err == nil {
				t.Fatalf("listen side answered %q to a client without the pinned ML-DSA-65 key", buf)
			}
		}
		t.Logf("impostor: %v", err)
		if transport == "tcp" {
			line := l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel handshake failed"))
			if !strings.Contains(line.str("err"), "ML-DSA verification failure") {
				t.Errorf("listen side err %q, want the CertificateVerify's ML-DSA verification failure", line.str("err"))
			}
		}
		if n := len(l.logs(msgIs("tunnel connected"))); n != 0 {
			t.Errorf("listen side logged %d tunnel connections", n)
		}
		if n := o.acceptCount(); n != 0 {
			t.Errorf("origin accepted %d connections, want 0", n)
		}
	})
}

// TestPinnedPeerWithoutEd25519KeyRefused holds the dial identity's ML-DSA
// key, so the TLS handshake succeeds, but not its Ed25519 key: its session
// proof fails and the listen side refuses the tunnel.
func TestPinnedPeerWithoutEd25519KeyRefused(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 30*time.Second)
		o := startEcho(t)
		l := startListen(t, ctx, 0, transport, map[string]string{"PQT_TARGET": o.addr()})
		store := impostorStore(t, true, false)
		s, err := dialSession(within(t, ctx, 10*time.Second), transport, l.tunnelAddr, store.ClientConfig())
		if err != nil {
			t.Fatalf("TLS handshake with the pinned ML-DSA-65 key: %v", err)
		}
		defer s.close()
		_, err = store.Authenticate(&s.cs, s.rw, hybridtls.RoleClient)
		t.Logf("impostor Authenticate: %v", err)
		line := l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel handshake failed", "reason", "proof_failed"))
		if !strings.Contains(line.str("err"), "Ed25519") {
			t.Errorf("listen side err %q does not name the Ed25519 proof", line.str("err"))
		}
		if n := len(l.logs(msgIs("tunnel connected"))); n != 0 {
			t.Errorf("listen side logged %d tunnel connections", n)
		}
		if n := o.acceptCount(); n != 0 {
			t.Errorf("origin accepted %d connections, want 0", n)
		}
	})
}

// TestOlderVersionPeerRefused: a client speaking pqtunnel/1 is refused by
// the listen side with reason version_mismatch, and a dial side whose peer
// speaks pqtunnel/1 refuses it; both sides name both versions.
func TestOlderVersionPeerRefused(t *testing.T) {
	t.Run("older client", func(t *testing.T) {
		ctx := testContext(t, 30*time.Second)
		l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": "127.0.0.1:9"})
		cfg := dialStore(t).ClientConfig()
		cfg.NextProtos = []string{previousALPN}
		s, err := dialSession(within(t, ctx, 10*time.Second), "tcp", l.tunnelAddr, cfg)
		if err == nil {
			s.close()
			t.Fatal("a pqtunnel/1 client completed a handshake")
		}
		t.Logf("older client: %v", err)
		line := l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel handshake failed", "reason", "version_mismatch"))
		if !strings.Contains(line.str("err"), previousALPN) || line.str("version") != wire.ALPN || !strings.Contains(line.str("hint"), wire.ALPN) {
			t.Errorf("listen side names err %q, version %q, hint %q: want the peer's %s and this side's %s", line.str("err"), line.str("version"), line.str("hint"), previousALPN, wire.ALPN)
		}
	})
	t.Run("older server", func(t *testing.T) {
		ctx := testContext(t, 30*time.Second)
		old := startOldServer(t)
		d := startDial(t, ctx, old, "tcp", nil, map[string]string{"PQT_CONNECTIONS": "1"})
		line := d.waitLog(t, within(t, ctx, 10*time.Second), msgIs("tunnel dial failed", "reason", "version_mismatch"))
		for _, k := range []string{"err", "hint"} {
			if v := line.str(k); !strings.Contains(v, previousALPN) || !strings.Contains(v, wire.ALPN) {
				t.Errorf("dial failure %s %q does not name both the peer's %s and this side's %s", k, v, previousALPN, wire.ALPN)
			}
		}
	})
}

// previousALPN is what pqtunnel/1 peers offer and select.
const previousALPN = "pqtunnel/1"

// startOldServer serves TLS on loopback as a pqtunnel/1 listen side's
// handshake does (ALPN pqtunnel/1, a certificate requested) until the test
// ends, and returns its address.
func startOldServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{previousALPN},
		Certificates: []tls.Certificate{dialIdentity(t).Certificate},
		ClientAuth:   tls.RequireAnyClientCert,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_ = tls.Server(c, cfg).Handshake() // the client refuses it
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// TestPureMLKEM1024Tunnel: with PQT_GROUPS=MLKEM1024 on both sides the
// tunnel uses pure ML-KEM-1024 on each transport, and strict mode accepts it.
func TestPureMLKEM1024Tunnel(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		l := startListen(t, ctx, 0, transport, map[string]string{"PQT_TARGET": o.addr(), "PQT_GROUPS": "MLKEM1024"})
		d := startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_GROUPS": "MLKEM1024", "PQT_CONNECTIONS": "1"})
		connected := msgIs("tunnel connected", "transport", transport, "group", "MLKEM1024", "sig", "ML-DSA-65")
		d.waitLog(t, within(t, ctx, 20*time.Second), connected)
		l.waitLog(t, within(t, ctx, 10*time.Second), connected)
		if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(17, 32<<10)); err != nil {
			t.Fatal(err)
		}
	})
}

// keygenCNSA2 writes an ML-DSA-87 identity with 'pqtunnel keygen --profile
// cnsa2' and returns its path and pin.
func keygenCNSA2(t *testing.T, name string) identity {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), name+".id")
	cmd := exec.CommandContext(ctx, pqtunnelBin, "keygen", "--profile", "cnsa2", "-o", path)
	cmd.Env = testutil.ChildEnv(nil)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pqtunnel keygen --profile cnsa2: %v", err)
	}
	return identity{path: path, pin: strings.TrimSpace(string(out))}
}

// TestCNSA2Profile runs both sides with PQT_PROFILE=cnsa2 and ML-DSA-87
// identities: each transport negotiates MLKEM1024 and authenticates with
// ML-DSA-87. A side given an ML-DSA-65 identity under the profile refuses
// to start and names the variable.
func TestCNSA2Profile(t *testing.T) {
	l87, d87 := keygenCNSA2(t, "listen"), keygenCNSA2(t, "dial")
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		l := startListen(t, ctx, 0, transport, map[string]string{"PQT_TARGET": o.addr(), "PQT_PROFILE": "cnsa2",
			"PQT_IDENTITY": l87.path, "PQT_PEERS": d87.pin})
		d := startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_PROFILE": "cnsa2", "PQT_CONNECTIONS": "1",
			"PQT_IDENTITY": d87.path, "PQT_PEERS": l87.pin})
		connected := msgIs("tunnel connected", "transport", transport, "group", "MLKEM1024", "sig", "ML-DSA-87", "pq_auth", "true")
		d.waitLog(t, within(t, ctx, 20*time.Second), connected)
		l.waitLog(t, within(t, ctx, 10*time.Second), connected)
		if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(19, 32<<10)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ML-DSA-65 identity refused at start", func(t *testing.T) {
		ctx := testContext(t, 30*time.Second)
		env := sideEnv("listen", "tcp", identityNamed(t, "listen"), identityNamed(t, "dial"), map[string]string{
			"PQT_PROFILE": "cnsa2", "PQT_TUNNEL": loopback(freePort(t)), "PQT_TARGET": "127.0.0.1:9"})
		p := startProc(t, ctx, "listen side", env, pqtunnelBin)
		if code := p.wait(t, ctx); code == 0 {
			t.Fatal("a cnsa2 listen side with an ML-DSA-65 identity started")
		}
		if e := p.stderr.String(); !strings.Contains(e, "PQT_IDENTITY") || !strings.Contains(e, "ML-DSA-87") {
			t.Errorf("start-up error %q does not name PQT_IDENTITY and ML-DSA-87", e)
		}
	})
}

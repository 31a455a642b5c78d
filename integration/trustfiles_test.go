package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
)

// TestTrustFilesWritableByOthersRefused starts a listen side whose pins file,
// and then a CA-mode listen side whose PQT_CA bundle, others may write: each
// refuses to start with one error naming the variable, the file and its mode;
// so do local wrappers whose tls:// routes' PQT_TLS_CLIENT_CA or PQT_TLS_CA
// others may write. A pins file behind Kubernetes-Secret-style links is
// accepted.
func TestTrustFilesWritableByOthersRefused(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	refused := func(t *testing.T, env map[string]string, variable, path, mode string) {
		t.Helper()
		if env["PQT_MODE"] != "" {
			env["PQT_TUNNEL"] = loopback(freePort(t))
			env["PQT_TARGET"] = loopback(freePort(t))
		}
		p := startProc(t, ctx, "pqtunnel", env, pqtunnelBin)
		if code := p.wait(t, within(t, ctx, 10*time.Second)); code == 0 {
			t.Fatal("exit code 0, want non-zero")
		}
		out := p.stderr.String()
		for _, want := range []string{variable + ": ", path, "mode " + mode, "chmod go-w"} {
			if !strings.Contains(out, want) {
				t.Errorf("stderr does not contain %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "tunnel listening") || strings.Contains(out, `"msg":"forwarding"`) {
			t.Errorf("started listening with the writable file:\n%s", out)
		}
	}
	t.Run("pins file", func(t *testing.T) {
		pins := filepath.Join(t.TempDir(), "peers")
		if err := os.WriteFile(pins, []byte(identityNamed(t, "dial").pin+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(pins, 0o664); err != nil {
			t.Fatal(err)
		}
		refused(t, sideEnv("listen", "tcp", identityNamed(t, "listen"), identity{pin: pins}, nil), "PQT_PEERS", pins, "0664")
	})
	t.Run("CA bundle", func(t *testing.T) {
		dir := t.TempDir()
		ca := testca.New(t, "ca").Save(t, dir)
		server := ca.Issue(t, testca.Leaf{DNS: []string{"server.example"}}).Save(t, dir, "server")
		if err := os.Chmod(ca.Path, 0o666); err != nil {
			t.Fatal(err)
		}
		refused(t, sideEnv("listen", "tcp", identity{}, identity{}, hosCAEnv(server, ca, nil)), "PQT_CA", ca.Path, "0666")
	})
	tlsRoute := func(t *testing.T, variable string) {
		dir := t.TempDir()
		ca := testca.New(t, "ca").Save(t, dir)
		if err := os.Chmod(ca.Path, 0o646); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"PQT_LOG_FORMAT": "json", variable: ca.Path}
		if variable == "PQT_TLS_CLIENT_CA" {
			server := ca.Issue(t, testca.Leaf{DNS: []string{"server.example"}}).Save(t, dir, "server")
			env["PQT_FORWARD"] = "web=tls://" + loopback(freePort(t))
			env["PQT_TARGET"] = "web=" + loopback(freePort(t))
			env["PQT_TLS_CERT"], env["PQT_TLS_KEY"] = server.CertPath, server.KeyPath
		} else {
			env["PQT_FORWARD"] = "api=" + loopback(freePort(t))
			env["PQT_TARGET"] = "api=tls://" + loopback(freePort(t))
		}
		refused(t, env, variable, ca.Path, "0646")
	}
	t.Run("client CA of a tls:// forward route", func(t *testing.T) { tlsRoute(t, "PQT_TLS_CLIENT_CA") })
	t.Run("CA of a tls:// target route", func(t *testing.T) { tlsRoute(t, "PQT_TLS_CA") })
	t.Run("Kubernetes Secret mount", func(t *testing.T) {
		dir := t.TempDir()
		ts := filepath.Join(dir, "..2026_12_01_22_00_00.1")
		if err := os.Mkdir(ts, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ts, "peers"), []byte(identityNamed(t, "dial").pin+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("..data/peers", filepath.Join(dir, "peers")); err != nil {
			t.Fatal(err)
		}
		o := startEcho(t)
		l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": o.addr(), "PQT_PEERS": filepath.Join(dir, "peers")})
		d := startDial(t, ctx, l.tunnelAddr, "tcp", nil, map[string]string{"PQT_CONNECTIONS": "1"})
		d.waitLog(t, within(t, ctx, 20*time.Second), msgIs("tunnel connected"))
	})
}

// TestReloadRefusesWritableTrustFile makes a running listen side's pins file
// world-writable and empties it: the SIGHUP reload fails with an ERROR
// naming the file and its mode, the pins in force stay, and the connected
// peer keeps its tunnel.
func TestReloadRefusesWritableTrustFile(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	o := startEcho(t)
	pins := filepath.Join(t.TempDir(), "peers")
	if err := os.WriteFile(pins, []byte(identityNamed(t, "dial").pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l := startListen(t, ctx, 0, "quic", map[string]string{"PQT_TARGET": o.addr(), "PQT_PEERS": pins})
	d := startDial(t, ctx, l.tunnelAddr, "quic", nil, map[string]string{"PQT_CONNECTIONS": "1"})
	d.waitLog(t, within(t, ctx, 20*time.Second), msgIs("tunnel connected"))
	// Someone else rewrites the file: what they wrote must not take effect.
	if err := os.WriteFile(pins, []byte("# nobody\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pins, 0o666); err != nil {
		t.Fatal(err)
	}
	l.signal(t, syscall.SIGHUP)
	failed := l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("reload failed: keeping the identity and pins in force", "level", "ERROR"))
	for _, want := range []string{"PQT_PEERS: ", pins, "mode 0666"} {
		if !strings.Contains(failed.str("err"), want) {
			t.Errorf("reload failure %q does not contain %q", failed.str("err"), want)
		}
	}
	if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(1600, 64<<10)); err != nil {
		t.Fatalf("the peer's tunnel after the refused reload: %v", err)
	}
	if n := len(l.logs(msgIs("peer revoked"))); n != 0 {
		t.Errorf("%d peers revoked by a reload that failed", n)
	}
}

// TestAllowFileReloadRevokesLiveTunnel runs a CA-mode listen side whose
// PQT_ALLOW names a file of rules: rewriting it so that the connected peer's
// certificate no longer matches, then SIGHUP, closes its live tunnel and
// stream within a second; an emptied file accepts nobody.
func TestAllowFileReloadRevokesLiveTunnel(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		dir := t.TempDir()
		ca := testca.New(t, "ca").Save(t, dir)
		server := ca.Issue(t, testca.Leaf{DNS: []string{"server.example"}}).Save(t, dir, "server")
		good := ca.Issue(t, testca.Leaf{DNS: []string{"good.example"}}).Save(t, dir, "good")
		other := ca.Issue(t, testca.Leaf{DNS: []string{"other.example"}}).Save(t, dir, "other")
		allow := filepath.Join(dir, "allow")
		write := func(text string) {
			t.Helper()
			if err := os.WriteFile(allow, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		write("# tenants\napp=dns:good.example\nbatch=dns:other.example\n")
		o := startEcho(t)
		l := startListen(t, ctx, 0, transport, hosCAEnv(server, ca, map[string]string{"PQT_TARGET": o.addr(), "PQT_ALLOW": allow}))
		dial := func(leaf *testca.Cert) *side {
			return startDial(t, ctx, l.tunnelAddr, transport, nil, hosCAEnv(leaf, ca, map[string]string{"PQT_CONNECTIONS": "1", "PQT_SERVER_NAME": "server.example"}))
		}
		a, b := dial(good), dial(other)
		wctx := within(t, ctx, 20*time.Second)
		l.waitLog(t, wctx, msgIs("tunnel connected", "peer", "app"))
		l.waitLog(t, wctx, msgIs("tunnel connected", "peer", "batch"))
		a.waitLog(t, wctx, msgIs("tunnel connected"))
		b.waitLog(t, wctx, msgIs("tunnel connected"))

		fctx := within(t, ctx, 30*time.Second)
		f, err := topoStartFlow(fctx, a.forward[""], randomBytes(1700, 8<<20), 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		f.waitRead(t, fctx, 128<<10)
		write("batch=dns:other.example\n")
		hup := time.Now()
		l.signal(t, syscall.SIGHUP)
		l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("peer revoked", "peer", "app"))
		if err := f.wait(within(t, ctx, 5*time.Second)); err == nil {
			t.Fatal("the stream through the revoked tunnel completed")
		}
		took := time.Since(hup)
		t.Logf("tunnel of the peer dropped from the allow file ended %s after SIGHUP", took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("revocation took %s, want within 1s", took)
		}
		if err := echoExact(within(t, ctx, 10*time.Second), b.forward[""], randomBytes(1701, 64<<10)); err != nil {
			t.Fatalf("the peer still allowed: %v", err)
		}
		if n := len(l.logs(msgIs("peer revoked"))); n != 1 {
			t.Errorf("%d 'peer revoked' lines, want 1", n)
		}

		write("# nobody\n")
		l.signal(t, syscall.SIGHUP)
		l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("PQT_ALLOW lists no rule: every peer is refused and live tunnels are closed", "level", "WARN"))
		l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("peer revoked", "peer", "batch"))
		if err := expectClosedPromptly(ctx, b.forward[""], 2*time.Second); err != nil {
			t.Errorf("client of a peer revoked by an empty allow file: %v", err)
		}
	})
}

package integration

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// SIGHUP rotates an ML-DSA CA-mode certificate as it does a classical one:
// the listen side's certificate is replaced by one from another ML-DSA CA
// (ML-DSA-87), a dial side that trusts only the new CA cannot connect
// before the reload and connects after it, and the tunnel of a dial side
// that trusts only the old CA stays up and carries traffic throughout.
func TestCAModeReloadRotatesMLDSACertificate(t *testing.T) {
	dir := t.TempDir()
	oldDir, newDir := filepath.Join(dir, "old-ca"), filepath.Join(dir, "new-ca")
	pqtunnelCA(t, "init", "-o", oldDir)
	pqtunnelCA(t, "init", "-o", newDir, "-alg", "ML-DSA-87")
	server := issueWithCLI(t, oldDir, dir, "server", "server.example")
	rotated := issueWithCLI(t, newDir, dir, "server-rotated", "server.example")
	oldClient := issueWithCLI(t, oldDir, dir, "old-client", "good.example")
	newClient := issueWithCLI(t, newDir, dir, "new-client", "good.example")
	bundle := filepath.Join(dir, "clients.pem")
	writeBundle(t, bundle, server.ca, rotated.ca)

	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 90*time.Second)
		// The listen side reads its certificate from paths that the
		// rotation overwrites, as a certificate manager would.
		live := caFiles{cert: filepath.Join(t.TempDir(), "tls.crt"), key: filepath.Join(t.TempDir(), "tls.key"), ca: bundle}
		install(t, server.cert, live.cert)
		install(t, server.key, live.key)
		o := startEcho(t)
		l := startListen(t, ctx, 0, transport, live.env(map[string]string{"PQT_TARGET": o.addr(), "PQT_AUTH": "pq", "PQT_ALLOW": "dns:good.example"}))
		dialEnv := func(f caFiles, trust string) map[string]string {
			return f.env(map[string]string{"PQT_CONNECTIONS": "1", "PQT_SERVER_NAME": "server.example", "PQT_AUTH": "pq", "PQT_CA": trust})
		}
		connected := msgIs("tunnel connected", "transport", transport, "pq_auth", "true")

		before := startDial(t, ctx, l.tunnelAddr, transport, nil, dialEnv(oldClient, server.ca))
		before.waitLog(t, within(t, ctx, 20*time.Second), connected)
		after := startDial(t, ctx, l.tunnelAddr, transport, nil, dialEnv(newClient, rotated.ca))
		after.waitLog(t, within(t, ctx, 20*time.Second), msgIs("tunnel dial failed"))
		if n := len(after.logs(msgIs("tunnel connected"))); n != 0 {
			t.Fatalf("a dial side trusting only the new CA connected before the rotation")
		}

		install(t, rotated.cert, live.cert)
		install(t, rotated.key, live.key)
		l.signal(t, syscall.SIGHUP)
		l.waitLog(t, within(t, ctx, 10*time.Second), msgIs("reloaded identity and pins"))
		dl := after.waitLog(t, within(t, ctx, 20*time.Second), connected)
		if dl.str("sig") != "ML-DSA-65" && dl.str("sig") != "ML-DSA-87" {
			t.Errorf("the rotated certificate authenticated with sig=%q, want ML-DSA", dl.str("sig"))
		}
		if err := echoExact(within(t, ctx, 10*time.Second), after.forward[""], randomBytes(71, 64<<10)); err != nil {
			t.Errorf("traffic over the tunnel made with the rotated certificate: %v", err)
		}
		if n := len(before.logs(msgIs("tunnel disconnected"))); n != 0 {
			t.Errorf("the tunnel made with the old certificate went down on reload")
		}
		if err := echoExact(within(t, ctx, 10*time.Second), before.forward[""], randomBytes(72, 64<<10)); err != nil {
			t.Errorf("traffic over the tunnel made before the rotation: %v", err)
		}
	})
}

// install copies src over dst with mode 0600, replacing it atomically.
func install(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

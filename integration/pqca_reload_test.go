package integration

import (
	"crypto/mldsa"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
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

// An ML-DSA certificate from the trusted ML-DSA CA is refused once it has
// expired, on each transport, and the listen side says why.
func TestCAModeRefusesExpiredMLDSACertificate(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	pqtunnelCA(t, "init", "-o", caDir)
	server := issueWithCLI(t, caDir, dir, "server", "server.example")
	expired := signMLDSALeaf(t, caDir, dir, "expired", "good.example", time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))

	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		l := startListen(t, ctx, 0, transport, server.env(map[string]string{"PQT_TARGET": startEcho(t).addr(), "PQT_AUTH": "pq", "PQT_ALLOW": "dns:good.example"}))
		startDial(t, ctx, l.tunnelAddr, transport, nil, expired.env(map[string]string{
			"PQT_CONNECTIONS": "1", "PQT_SERVER_NAME": "server.example", "PQT_AUTH": "pq", "PQT_CA": server.ca,
		}))
		if err := awaitLogWith(within(t, ctx, 20*time.Second), l.proc, msgIs("tunnel handshake refused"), "err", "expired"); err != nil {
			t.Fatal(err)
		}
		if n := len(l.logs(msgIs("tunnel connected"))); n != 0 {
			t.Errorf("an expired ML-DSA certificate made %d tunnels", n)
		}
	})
}

// signMLDSALeaf issues an ML-DSA-65 leaf for dns valid from notBefore to
// notAfter with the CA that 'pqtunnel ca init' wrote to caDir, with the
// standard library, so that validity can be set in the past.
func signMLDSALeaf(t *testing.T, caDir, dir, name, dns string, notBefore, notAfter time.Time) caFiles {
	t.Helper()
	caCertPEM, err := os.ReadFile(filepath.Join(caDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	caKeyPEM, err := os.ReadFile(filepath.Join(caDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := pem.Decode(caCertPEM)
	kb, _ := pem.Decode(caKeyPEM)
	if cb == nil || kb == nil {
		t.Fatal("the CA's files hold no PEM block")
	}
	caCert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := mldsa.GenerateKey(mldsa.MLDSA65())
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: dns},
		DNSNames:     []string{dns},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, caCert, leafKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	f := caFiles{cert: filepath.Join(dir, name+".crt"), key: filepath.Join(dir, name+".key"), ca: filepath.Join(caDir, "ca.crt")}
	if err := os.WriteFile(f.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

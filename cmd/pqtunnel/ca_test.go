package main

import (
	"bytes"
	"crypto/mldsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/ca"
)

func runOK(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(args, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("pqtunnel %s exited %d: %s", strings.Join(args, " "), code, stderr.String())
	}
	return stdout.String()
}

func runFails(t *testing.T, want string, args ...string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(args, nil, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), want) {
		t.Errorf("pqtunnel %s: exit %d, stderr %q; want a failure saying %q", strings.Join(args, " "), code, stderr.String(), want)
	}
}

func TestCACommands(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "ca")
	out := runOK(t, "ca", "init", "-o", dir, "-alg", "ML-DSA-87")
	if !strings.Contains(out, "ML-DSA-87 CA") || !strings.Contains(out, "PQT_CA") {
		t.Errorf("ca init printed %q", out)
	}
	runFails(t, "never overwritten", "ca", "init", "-o", dir)

	prefix := filepath.Join(tmp, "web")
	out = runOK(t, "ca", "issue", "--ca", dir, "--name", "dns:web.internal", "--uri", "spiffe://cluster.local/ns/app/sa/web", "--days", "90", "-o", prefix)
	if !strings.Contains(out, "dns:web.internal,uri:spiffe://cluster.local/ns/app/sa/web") {
		t.Errorf("ca issue printed %q", out)
	}
	if st, err := os.Stat(prefix + ".key"); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("leaf key: %v, %v; want mode 0600", st.Mode().Perm(), err)
	}
	// The files are what PQT_CERT and PQT_KEY load.
	pair, err := tls.LoadX509KeyPair(prefix+".crt", prefix+".key")
	if err != nil {
		t.Fatalf("LoadX509KeyPair(issued): %v", err)
	}
	if k, ok := pair.PrivateKey.(*mldsa.PrivateKey); !ok || k.PublicKey().Parameters() != mldsa.MLDSA87() {
		t.Errorf("issued key is %T, want ML-DSA-87", pair.PrivateKey)
	}
	runFails(t, "at least one name", "ca", "issue", "--ca", dir, "-o", filepath.Join(tmp, "nameless"))
	runFails(t, "want dns:NAME", "ca", "issue", "--ca", dir, "--name", "web.internal", "-o", filepath.Join(tmp, "bad"))
	runFails(t, "-alg", "ca", "init", "-o", filepath.Join(tmp, "small"), "-alg", "ML-DSA-44")

	key, err := mldsa.GenerateKey(mldsa.MLDSA65())
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "db"}, DNSNames: []string{"db.internal"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csrPath := filepath.Join(tmp, "db.csr")
	if err := os.WriteFile(csrPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	out = runOK(t, "ca", "sign", "--ca", dir, csrPath)
	block, _ := pem.Decode([]byte(out))
	if block == nil {
		t.Fatalf("ca sign printed %q, want a PEM certificate", out)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !key.PublicKey().Equal(cert.PublicKey) || cert.DNSNames[0] != "db.internal" {
		t.Fatalf("signed certificate: %v", err)
	}
	c, err := ca.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(c.Cert); err != nil {
		t.Errorf("signed certificate does not verify under the CA: %v", err)
	}
	runFails(t, "usage", "ca", "sign", "--ca", dir)
	runFails(t, "unknown subcommand", "ca", "revoke")
}

// FuzzCANameFlag: addName never panics, and a name it accepts prints (as
// certNames does in 'ca issue' output) to a form it accepts again.
func FuzzCANameFlag(f *testing.F) {
	for _, s := range []string{"dns:web.internal", "cn:web", "uri:spiffe://x/y", "dns:", "web", "ip:1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var n nameFlags
		if err := n.addName(s); err != nil {
			return
		}
		var again nameFlags
		for _, part := range []string{certNames(n.names)} {
			if err := again.addName(part); err != nil {
				t.Fatalf("addName(%q) accepted, but its printed form %q is refused: %v", s, part, err)
			}
		}
		if certNames(again.names) != certNames(n.names) {
			t.Fatalf("round trip %q -> %q", certNames(n.names), certNames(again.names))
		}
	})
}

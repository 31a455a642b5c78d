//go:build !windows

package examples_test

import (
	"crypto/mldsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// writeMLDSARequest makes the db.csr that README's 'pqtunnel ca sign'
// line signs: a request for an ML-DSA-65 key made elsewhere.
func writeMLDSARequest(t *testing.T, e *blockEnv) {
	t.Helper()
	key, err := mldsa.GenerateKey(mldsa.MLDSA65())
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "db"}, DNSNames: []string{"db.internal"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dir, "db.csr"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

// checkCAFiles checks what README's 'pqtunnel ca' block leaves: a leaf key
// and certificate that load as PQT_KEY and PQT_CERT and verify under
// ca.crt, with the key mode 0600, and the signed db.crt.
func checkCAFiles(t *testing.T, e *blockEnv) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(readFile(t, filepath.Join(e.etc(), "ca", "ca.crt")))) {
		t.Fatal("ca.crt holds no certificate")
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(e.dir, "web.crt"), filepath.Join(e.dir, "web.key"))
	if err != nil {
		t.Fatalf("web.crt/web.key do not load as PQT_CERT/PQT_KEY: %v", err)
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "web.internal", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("web.crt does not verify under ca.crt: %v", err)
	}
	if st, err := os.Stat(filepath.Join(e.dir, "web.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("web.key: %v, want mode 0600", err)
	}
	block, _ := pem.Decode([]byte(readFile(t, filepath.Join(e.dir, "db.crt"))))
	if block == nil {
		t.Fatal("db.crt holds no PEM certificate")
	}
	db, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Verify(x509.VerifyOptions{Roots: pool, DNSName: "db.internal"}); err != nil {
		t.Errorf("db.crt does not verify under ca.crt: %v", err)
	}
}

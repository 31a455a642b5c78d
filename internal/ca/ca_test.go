package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/mldsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/auth"
)

// The seed-only example private keys of RFC 9881 (appendix C), seed
// 00 01 ... 1f, as another implementation writes them.
var rfc9881Keys = map[string]string{
	"ML-DSA-44": "MDQCAQAwCwYJYIZIAWUDBAMRBCKAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZ\nGhscHR4f",
	"ML-DSA-65": "MDQCAQAwCwYJYIZIAWUDBAMSBCKAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZ\nGhscHR4f",
	"ML-DSA-87": "MDQCAQAwCwYJYIZIAWUDBAMTBCKAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZ\nGhscHR4f",
}

func TestKeyEncodingIsRFC9881SeedOnly(t *testing.T) {
	seed := make([]byte, 32)
	for i := range seed {
		seed[i] = byte(i)
	}
	for name, body := range rfc9881Keys {
		t.Run(name, func(t *testing.T) {
			params, err := ParseParameters(name)
			if err != nil {
				t.Fatal(err)
			}
			rfc := []byte("-----BEGIN PRIVATE KEY-----\n" + body + "\n-----END PRIVATE KEY-----\n")
			key, err := ParseKey(rfc)
			if err != nil {
				t.Fatalf("ParseKey(RFC 9881 example): %v", err)
			}
			want, err := mldsa.NewPrivateKey(params, seed)
			if err != nil {
				t.Fatal(err)
			}
			if !key.Equal(want) || key.PublicKey().Parameters() != params {
				t.Fatal("the RFC 9881 example does not load as the seed 00..1f key")
			}
			ours, err := MarshalKey(want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ours, rfc) {
				t.Errorf("MarshalKey =\n%s\nwant the RFC 9881 encoding\n%s", ours, rfc)
			}
		})
	}
}

func TestParseParameters(t *testing.T) {
	for _, p := range []mldsa.Parameters{mldsa.MLDSA44(), mldsa.MLDSA65(), mldsa.MLDSA87()} {
		for _, s := range []string{p.String(), strings.ToLower(p.String()), strings.ReplaceAll(p.String(), "-", "")} {
			if got, err := ParseParameters(s); err != nil || got != p {
				t.Errorf("ParseParameters(%q) = %v, %v; want %v", s, got, err, p)
			}
		}
	}
	for _, s := range []string{"", "ML-DSA-66", "Ed25519"} {
		if _, err := ParseParameters(s); err == nil {
			t.Errorf("ParseParameters(%q) succeeded", s)
		}
	}
}

func mustInit(t *testing.T, params mldsa.Parameters) (*CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	c, err := Init(dir, "test CA", params, 30)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return c, dir
}

func TestInitIssueVerifies(t *testing.T) {
	for _, params := range []mldsa.Parameters{mldsa.MLDSA65(), mldsa.MLDSA87()} {
		t.Run(params.String(), func(t *testing.T) {
			c, dir := mustInit(t, params)
			for name, want := range map[string]os.FileMode{KeyFile: 0o600, CertFile: 0o644} {
				st, err := os.Stat(filepath.Join(dir, name))
				if err != nil || st.Mode().Perm() != want {
					t.Errorf("%s: mode %v, %v; want %#o", name, st.Mode().Perm(), err, want)
				}
			}
			if _, err := Init(dir, "again", params, 30); err == nil {
				t.Error("Init overwrote an existing CA")
			}
			loaded, err := Load(dir)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !loaded.Key.Equal(c.Key) || !loaded.Cert.Equal(c.Cert) {
				t.Fatal("Load returned another CA")
			}
			spiffe, _ := url.Parse("spiffe://cluster.local/ns/app/sa/web")
			key, cert, err := loaded.Issue(Names{DNS: []string{"web.internal"}, URIs: []*url.URL{spiffe}}, 90)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if key.PublicKey().Parameters() != params || cert.SignatureAlgorithm.String() != params.String() {
				t.Errorf("leaf key %s signed with %s, want %s both", key.PublicKey().Parameters(), cert.SignatureAlgorithm, params)
			}
			if cert.Subject.CommonName != "web.internal" || cert.URIs[0].String() != spiffe.String() {
				t.Errorf("leaf names CN=%q URIs=%v", cert.Subject.CommonName, cert.URIs)
			}
			if !cert.NotAfter.Equal(c.Cert.NotAfter) {
				t.Errorf("leaf valid until %s, want capped at the CA's %s", cert.NotAfter, c.Cert.NotAfter)
			}
			pool := x509.NewCertPool()
			pool.AddCert(c.Cert)
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				chains, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "web.internal", KeyUsages: []x509.ExtKeyUsage{usage}})
				if err != nil {
					t.Fatalf("leaf does not verify for %v: %v", usage, err)
				}
				if pq, why := auth.ChainPQ(chains[0]); !pq {
					t.Errorf("chain is not ML-DSA end to end: %s", why)
				}
			}
			prefix := filepath.Join(t.TempDir(), "web")
			keyPath, certPath, err := WriteLeaf(prefix, key, cert)
			if err != nil {
				t.Fatal(err)
			}
			if st, err := os.Stat(keyPath); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("leaf key mode %v, %v; want 0600", st.Mode().Perm(), err)
			}
			if _, _, err := WriteLeaf(prefix, key, cert); err == nil {
				t.Error("WriteLeaf overwrote an existing key")
			}
			data, err := os.ReadFile(certPath)
			if err != nil {
				t.Fatal(err)
			}
			if n := bytes.Count(data, []byte("BEGIN CERTIFICATE")); n != 1 {
				t.Errorf("certificate file holds %d certificates, want the leaf alone", n)
			}
		})
	}
}

func TestIssueNeedsAName(t *testing.T) {
	c, _ := mustInit(t, mldsa.MLDSA65())
	if _, _, err := c.Issue(Names{}, 90); err == nil {
		t.Fatal("Issue without a name succeeded")
	}
	if _, _, err := c.Issue(Names{DNS: []string{"a"}}, 0); err == nil {
		t.Fatal("Issue for zero days succeeded")
	}
}

func csr(t *testing.T, key any, dns ...string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "from csr"}, DNSNames: dns}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestSignRequest(t *testing.T) {
	c, _ := mustInit(t, mldsa.MLDSA65())
	key, err := mldsa.GenerateKey(mldsa.MLDSA44())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := c.SignRequest(csr(t, key, "db.internal"), 10)
	if err != nil {
		t.Fatalf("SignRequest: %v", err)
	}
	if !key.PublicKey().Equal(cert.PublicKey) || cert.DNSNames[0] != "db.internal" || cert.Subject.CommonName != "from csr" {
		t.Errorf("signed certificate: key match %v, names %v %q", key.PublicKey().Equal(cert.PublicKey), cert.DNSNames, cert.Subject.CommonName)
	}
	if d := time.Until(cert.NotAfter); d < 9*24*time.Hour || d > 10*24*time.Hour {
		t.Errorf("valid for %v, want 10 days", d)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SignRequest(csr(t, ec, "x"), 10); err == nil || !strings.Contains(err.Error(), "ML-DSA keys only") {
		t.Errorf("SignRequest(ECDSA) = %v, want a refusal", err)
	}
	tampered := csr(t, key, "db.internal")
	block, _ := pem.Decode(tampered)
	block.Bytes[len(block.Bytes)-10] ^= 1 // inside the signature
	if _, err := c.SignRequest(block.Bytes, 10); err == nil {
		t.Error("SignRequest accepted a request whose signature does not verify")
	}
}

func TestLoadRefuses(t *testing.T) {
	_, dir := mustInit(t, mldsa.MLDSA65())
	if err := os.Chmod(filepath.Join(dir, KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("Load(world-readable key) = %v, want the chmod fix", err)
	}
	_, other := mustInit(t, mldsa.MLDSA65())
	if err := os.Chmod(filepath.Join(dir, KeyFile), 0o600); err != nil {
		t.Fatal(err)
	}
	otherCert, err := os.ReadFile(filepath.Join(other, CertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CertFile), otherCert, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "is not the key of") {
		t.Errorf("Load(key of another CA) = %v", err)
	}
}

// FuzzParseKey: ParseKey never panics, and what it accepts re-encodes to a
// key that parses back equal.
func FuzzParseKey(f *testing.F) {
	for _, body := range rfc9881Keys {
		f.Add([]byte("-----BEGIN PRIVATE KEY-----\n" + body + "\n-----END PRIVATE KEY-----\n"))
	}
	key, err := mldsa.GenerateKey(mldsa.MLDSA65())
	if err != nil {
		f.Fatal(err)
	}
	ours, err := MarshalKey(key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ours)
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseKey(data)
		if err != nil {
			return
		}
		again, err := MarshalKey(k)
		if err != nil {
			t.Fatalf("MarshalKey of a parsed key: %v", err)
		}
		k2, err := ParseKey(again)
		if err != nil || !k2.Equal(k) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// Package testca is a throwaway certificate authority for tests: roots and
// intermediates with classical or ML-DSA keys, leaves for client and server
// use, and the PEM files the binary reads. It imports nothing of pqtunnel,
// so that every package's tests, hybridtls's own included, can use it.
package testca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/mldsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Kind names a key type.
type Kind string

// The key types certificates can have. The zero Kind is P256.
const (
	P256    Kind = "P-256"
	MLDSA44 Kind = "ML-DSA-44"
	MLDSA65 Kind = "ML-DSA-65"
	MLDSA87 Kind = "ML-DSA-87"
)

// NewKey generates a key of kind k ("" is P256).
func NewKey(t testing.TB, k Kind) crypto.Signer {
	t.Helper()
	var key crypto.Signer
	var err error
	switch k {
	case P256, "":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case MLDSA44:
		key, err = mldsa.GenerateKey(mldsa.MLDSA44())
	case MLDSA65:
		key, err = mldsa.GenerateKey(mldsa.MLDSA65())
	case MLDSA87:
		key, err = mldsa.GenerateKey(mldsa.MLDSA87())
	default:
		t.Fatalf("testca: unknown key kind %q", k)
	}
	if err != nil {
		t.Fatalf("testca: generate %s key: %v", k, err)
	}
	return key
}

// CA is a root or intermediate certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// Pool trusts the root this CA chains to.
	Pool *x509.CertPool
	// Path is the PEM file of Cert once Save has written it.
	Path string
	// chain is this CA's certificate and those between it and the root,
	// nearest first, as a leaf it issues presents them; empty for a root.
	chain [][]byte
}

// New returns a root CA named name with a P-256 key, valid from an hour ago
// for a day.
func New(t testing.TB, name string) *CA { return NewRoot(t, name, P256) }

// NewRoot returns a root CA named name with a key of kind k, valid from an
// hour ago for a day.
func NewRoot(t testing.TB, name string, k Kind) *CA {
	t.Helper()
	key := NewKey(t, k)
	cert := create(t, caTemplate(t, name), nil, key, key)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, Key: key, Pool: pool}
}

// Intermediate returns a CA named name with a key of kind k, signed by ca.
func (ca *CA) Intermediate(t testing.TB, name string, k Kind) *CA {
	t.Helper()
	key := NewKey(t, k)
	cert := create(t, caTemplate(t, name), ca, key, ca.Key)
	return &CA{Cert: cert, Key: key, Pool: ca.Pool, chain: append([][]byte{cert.Raw}, ca.chain...)}
}

// Save writes ca's certificate as PEM to dir/NAME.ca.pem, NAME being its
// common name, records the path in ca.Path and returns ca.
func (ca *CA) Save(t testing.TB, dir string) *CA {
	t.Helper()
	ca.Path = writePEM(t, filepath.Join(dir, ca.Cert.Subject.CommonName+".ca.pem"), 0o600, &pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
	return ca
}

// Leaf describes a certificate to issue.
type Leaf struct {
	// CN is the subject's common name; empty is the first DNS name.
	CN   string
	DNS  []string
	URIs []string
	// Key is the leaf's key type; empty is P256.
	Key Kind
	// NotBefore and NotAfter bound its validity; zero values are an hour
	// ago and a day from now.
	NotBefore, NotAfter time.Time
}

// Cert is an issued leaf with its key and the intermediates above it, and
// its files once Save has written them.
type Cert struct {
	tls.Certificate
	CertPath, KeyPath string
}

// Issue signs a leaf for client and server use as l describes.
func (ca *CA) Issue(t testing.TB, l Leaf) *Cert {
	t.Helper()
	cn := l.CN
	if cn == "" && len(l.DNS) > 0 {
		cn = l.DNS[0]
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     l.DNS,
		NotBefore:    l.NotBefore,
		NotAfter:     l.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = now.Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now.Add(24 * time.Hour)
	}
	for _, s := range l.URIs {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("testca: URI %q: %v", s, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	key := NewKey(t, l.Key)
	leaf := create(t, tmpl, ca, key, ca.Key)
	return &Cert{Certificate: tls.Certificate{
		Certificate: append([][]byte{leaf.Raw}, ca.chain...),
		PrivateKey:  key,
		Leaf:        leaf,
	}}
}

// Save writes c's chain as PEM to dir/name.crt and its key as PKCS #8 PEM
// to dir/name.key (both mode 0600), records the paths and returns c.
func (c *Cert) Save(t testing.TB, dir, name string) *Cert {
	t.Helper()
	var blocks []*pem.Block
	for _, der := range c.Certificate.Certificate {
		blocks = append(blocks, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	pk8, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatalf("testca: marshal key of %s: %v", name, err)
	}
	c.CertPath = writePEM(t, filepath.Join(dir, name+".crt"), 0o600, blocks...)
	c.KeyPath = writePEM(t, filepath.Join(dir, name+".key"), 0o600, &pem.Block{Type: "PRIVATE KEY", Bytes: pk8})
	return c
}

func caTemplate(t testing.TB, name string) *x509.Certificate {
	t.Helper()
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
}

// create signs tmpl for key by parent with signer (parent nil: self-signed).
func create(t testing.TB, tmpl *x509.Certificate, parent *CA, key, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	issuer := tmpl
	if parent != nil {
		issuer = parent.Cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatalf("testca: create %q: %v", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testca: parse %q: %v", tmpl.Subject.CommonName, err)
	}
	return cert
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	sn, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

func writePEM(t testing.TB, path string, perm os.FileMode, blocks ...*pem.Block) string {
	t.Helper()
	var b []byte
	for _, bl := range blocks {
		b = append(b, pem.EncodeToMemory(bl)...)
	}
	if err := os.WriteFile(path, b, perm); err != nil {
		t.Fatal(err)
	}
	return path
}

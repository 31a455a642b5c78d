// Package ca is a small ML-DSA certificate authority for pqtunnel's CA mode,
// for fleets whose own CA cannot issue ML-DSA certificates yet. It makes a
// self-signed ML-DSA-65 or ML-DSA-87 root, issues ML-DSA leaf certificates
// for client and server use, and signs certificate requests for ML-DSA keys
// made elsewhere, so every chain it produces is ML-DSA end to end.
//
// Keys are PKCS#8 "PRIVATE KEY" PEM in the seed-only form (RFC 9881) that
// OpenSSL 3.5 also writes, certificates ordinary PEM (RFC 9881). It keeps no
// database: serial numbers are random (crypto/x509 draws them), and it does
// not revoke.
package ca

import (
	"crypto/mldsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/auth"
)

// File names inside a CA directory.
const (
	KeyFile  = "ca.key"
	CertFile = "ca.crt"
)

// ParseParameters parses an ML-DSA parameter set name: ML-DSA-44, ML-DSA-65
// or ML-DSA-87, case and dashes ignored (mldsa87 works too).
func ParseParameters(s string) (mldsa.Parameters, error) {
	switch strings.ReplaceAll(strings.ToUpper(strings.TrimSpace(s)), "-", "") {
	case "MLDSA44":
		return mldsa.MLDSA44(), nil
	case "MLDSA65":
		return mldsa.MLDSA65(), nil
	case "MLDSA87":
		return mldsa.MLDSA87(), nil
	}
	return mldsa.Parameters{}, fmt.Errorf("%q is not ML-DSA-44, ML-DSA-65 or ML-DSA-87", s)
}

// CA is a loaded certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *mldsa.PrivateKey
}

// Init creates a CA in dir (created with mode 0700 if missing): a new root
// key (mode 0600) and a self-signed certificate valid for days. It never
// overwrites an existing CA.
func Init(dir, commonName string, params mldsa.Parameters, days int) (*CA, error) {
	if days < 1 {
		return nil, errors.New("validity must be at least one day")
	}
	key, err := mldsa.GenerateKey(params)
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", params, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: commonName},
		NotBefore: now.Add(-5 * time.Minute), // tolerate clocks slightly behind
		NotAfter:  now.AddDate(0, 0, days),
		IsCA:      true,
		// The root signs leaves directly: intermediates would add a
		// certificate and a signature to every handshake.
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.PublicKey(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create CA directory: %w", err)
	}
	keyPEM, err := MarshalKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeNew(filepath.Join(dir, KeyFile), keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeNew(filepath.Join(dir, CertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Load reads the CA in dir, refusing a key file that other users can read
// and a key that is not the certificate's.
func Load(dir string) (*CA, error) {
	keyPath := filepath.Join(dir, KeyFile)
	if err := auth.CheckKeyFileMode(keyPath); err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyPath, err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("CA certificate %s holds no PEM CERTIFICATE", filepath.Join(dir, CertFile))
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !key.PublicKey().Equal(cert.PublicKey) {
		return nil, fmt.Errorf("CA key %s is not the key of %s", keyPath, filepath.Join(dir, CertFile))
	}
	if !cert.IsCA {
		return nil, errors.New("CA certificate is not a CA (basicConstraints cA is false)")
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Names are the subject names of a leaf certificate.
type Names struct {
	CommonName string
	DNS        []string
	URIs       []*url.URL
}

// Issue makes a new leaf key with the CA's parameter set and a certificate
// for it, valid for days from now (but not past the CA's own expiry).
func (c *CA) Issue(names Names, days int) (*mldsa.PrivateKey, *x509.Certificate, error) {
	key, err := mldsa.GenerateKey(c.Key.PublicKey().Parameters())
	if err != nil {
		return nil, nil, fmt.Errorf("generate leaf key: %w", err)
	}
	cert, err := c.sign(key.PublicKey(), names, days)
	if err != nil {
		return nil, nil, err
	}
	return key, cert, nil
}

// SignRequest issues a certificate for the ML-DSA key of a PEM or DER
// certificate request, with the names it asks for. Other key types are
// refused: a classical leaf under an ML-DSA root is a mixed chain.
func (c *CA) SignRequest(csr []byte, days int) (*x509.Certificate, error) {
	if block, _ := pem.Decode(csr); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("PEM block %q is not a CERTIFICATE REQUEST", block.Type)
		}
		csr = block.Bytes
	}
	req, err := x509.ParseCertificateRequest(csr)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	pub, ok := req.PublicKey.(*mldsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("certificate request key is %T: this CA signs ML-DSA keys only, so that chains stay ML-DSA end to end", req.PublicKey)
	}
	return c.sign(pub, Names{CommonName: req.Subject.CommonName, DNS: req.DNSNames, URIs: req.URIs}, days)
}

func (c *CA) sign(pub *mldsa.PublicKey, names Names, days int) (*x509.Certificate, error) {
	if names.CommonName == "" && len(names.DNS) == 0 && len(names.URIs) == 0 {
		return nil, errors.New("a certificate needs at least one name (dns:, uri: or a common name)")
	}
	if days < 1 {
		return nil, errors.New("validity must be at least one day")
	}
	cn := names.CommonName
	if cn == "" && len(names.DNS) > 0 {
		cn = names.DNS[0]
	}
	now := time.Now()
	notAfter := now.AddDate(0, 0, days)
	if notAfter.After(c.Cert.NotAfter) {
		notAfter = c.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     names.DNS,
		URIs:         names.URIs,
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		SubjectKeyId: keyID(pub),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Cert, pub, c.Key)
	if err != nil {
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// MarshalKey encodes an ML-DSA private key as PKCS#8 PEM, seed only.
func MarshalKey(key *mldsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey decodes a PKCS#8 PEM ML-DSA private key.
func ParseKey(data []byte) (*mldsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	key, ok := k.(*mldsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want ML-DSA", k)
	}
	return key, nil
}

// WriteLeaf writes key to prefix.key (mode 0600) and cert to prefix.crt,
// refusing to overwrite either. The certificate file holds the leaf only:
// the peer has the root in PQT_CA, and sending it would add some 5 KB to
// every handshake.
func WriteLeaf(prefix string, key *mldsa.PrivateKey, cert *x509.Certificate) (keyPath, certPath string, err error) {
	keyPEM, err := MarshalKey(key)
	if err != nil {
		return "", "", err
	}
	keyPath, certPath = prefix+".key", prefix+".crt"
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := writeNew(certPath, CertPEM(cert), 0o644); err != nil {
		return "", "", err
	}
	return keyPath, certPath, nil
}

// CertPEM encodes a certificate as PEM.
func CertPEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("%w (existing files are never overwritten)", err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close() // the write error is what matters
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// keyID is the RFC 7093 method 1 key identifier: the leftmost 160 bits of
// SHA-256 over the public key.
func keyID(pub *mldsa.PublicKey) []byte {
	h := sha256.Sum256(pub.Bytes())
	return h[:20]
}

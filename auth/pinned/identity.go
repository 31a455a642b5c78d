package pinned

import (
	"crypto/ed25519"
	"crypto/mldsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/auth"
)

const (
	pemEd25519 = "PQTUNNEL ED25519 PRIVATE KEY"
	pemMLDSA   = "PQTUNNEL ML-DSA-65 SEED"
	pemMLDSA87 = "PQTUNNEL ML-DSA-87 SEED"
)

// identityParams are the ML-DSA parameter sets an identity may have, by
// the PEM block that holds the seed: ML-DSA-65 by default, ML-DSA-87 for
// PQT_PROFILE=cnsa2.
var identityParams = map[string]mldsa.Parameters{pemMLDSA: mldsa.MLDSA65(), pemMLDSA87: mldsa.MLDSA87()}

// Identity is a hybrid identity: an ML-DSA-65 key that signs the TLS
// handshake (CertificateVerify) and an Ed25519 key that signs the TLS session
// afterwards, so that impersonating it requires breaking both.
type Identity struct {
	Ed25519 ed25519.PrivateKey
	MLDSA   *mldsa.PrivateKey
	// Certificate is a certificate for the ML-DSA-65 key carrying the
	// Ed25519 public key in the OIDEd25519Key extension. Ed25519 signs it:
	// the pin, not the certificate's signature, is what is trusted, and 64
	// bytes of signature instead of 3,309 keep the handshake small.
	Certificate tls.Certificate
	Pin         Pin
}

// GenerateIdentity creates a new random identity with an ML-DSA-65 key.
func GenerateIdentity() (*Identity, error) { return GenerateIdentityFor(mldsa.MLDSA65()) }

// GenerateIdentityFor creates a new random identity with an ML-DSA key of
// params: ML-DSA-65, or ML-DSA-87 for the CNSA 2.0 profile.
func GenerateIdentityFor(params mldsa.Parameters) (*Identity, error) {
	if params != mldsa.MLDSA65() && params != mldsa.MLDSA87() {
		return nil, fmt.Errorf("an identity's key is ML-DSA-65 or ML-DSA-87, not %s", params)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	mlKey, err := mldsa.GenerateKey(params)
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", params, err)
	}
	return newIdentity(edKey, mlKey)
}

func newIdentity(edKey ed25519.PrivateKey, mlKey *mldsa.PrivateKey) (*Identity, error) {
	extValue, err := asn1.Marshal([]byte(edKey.Public().(ed25519.PublicKey)))
	if err != nil {
		return nil, fmt.Errorf("encode ed25519 extension: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pqtunnel identity"},
		// Pinned identities are keys, not credentials that expire: the pin is
		// what is trusted, so the validity window is as wide as X.509 allows.
		NotBefore:       time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:        time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		ExtraExtensions: []pkix.Extension{{Id: auth.OIDEd25519Key, Value: extValue}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, mlKey.PublicKey(), edKey)
	if err != nil {
		return nil, fmt.Errorf("create identity certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse identity certificate: %w", err)
	}
	pin, err := PinOf(leaf)
	if err != nil {
		return nil, err
	}
	return &Identity{
		Ed25519:     edKey,
		MLDSA:       mlKey,
		Certificate: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: mlKey, Leaf: leaf},
		Pin:         pin,
	}, nil
}

// MarshalPEM encodes the identity's private keys; the certificate is
// derived from them on load.
func (id *Identity) MarshalPEM() ([]byte, error) {
	pk8, err := x509.MarshalPKCS8PrivateKey(id.Ed25519)
	if err != nil {
		return nil, fmt.Errorf("encode ed25519 key: %w", err)
	}
	var b strings.Builder
	b.WriteString("# pqtunnel identity, pin " + id.Pin.String() + "\n")
	_ = pem.Encode(&b, &pem.Block{Type: pemEd25519, Bytes: pk8}) // strings.Builder cannot fail
	mlType := pemMLDSA
	if id.MLDSA.PublicKey().Parameters() == mldsa.MLDSA87() {
		mlType = pemMLDSA87
	}
	_ = pem.Encode(&b, &pem.Block{Type: mlType, Bytes: id.MLDSA.Bytes()}) // same
	return []byte(b.String()), nil
}

// ParseIdentityPEM decodes an identity written by MarshalPEM. Files written
// by pqtunnel/1 have the same form and keys, and so the same pin.
func ParseIdentityPEM(data []byte) (*Identity, error) {
	var edKey ed25519.PrivateKey
	var seed []byte
	var params mldsa.Parameters
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch block.Type {
		case pemEd25519:
			if edKey != nil {
				return nil, errors.New("identity has two Ed25519 keys")
			}
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("identity Ed25519 key: %w", err)
			}
			ek, ok := k.(ed25519.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("identity key is %T, want Ed25519", k)
			}
			edKey = ek
		case pemMLDSA, pemMLDSA87:
			if seed != nil {
				return nil, errors.New("identity has two ML-DSA keys")
			}
			params = identityParams[block.Type]
			if len(block.Bytes) != mldsa.PrivateKeySize {
				return nil, fmt.Errorf("identity %s seed is %d bytes, want %d", params, len(block.Bytes), mldsa.PrivateKeySize)
			}
			seed = block.Bytes
		default:
			return nil, fmt.Errorf("identity has unexpected PEM block %q", block.Type)
		}
	}
	switch {
	case edKey == nil && seed == nil:
		return nil, errors.New("no identity found: expected the PEM blocks written by 'pqtunnel keygen'")
	case edKey == nil:
		return nil, errors.New("identity has no Ed25519 key")
	case seed == nil:
		return nil, errors.New("identity has no ML-DSA key")
	}
	mlKey, err := mldsa.NewPrivateKey(params, seed)
	if err != nil {
		return nil, fmt.Errorf("identity %s key: %w", params, err)
	}
	return newIdentity(edKey, mlKey)
}

// LoadIdentityFile reads an identity file, refusing one that other users can
// read: a leaked identity lets anyone impersonate this side.
func LoadIdentityFile(path string) (*Identity, error) {
	if err := auth.CheckKeyFileMode(path); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read identity: %w", err)
	}
	id, err := ParseIdentityPEM(data)
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	return id, nil
}

// Pin names an identity by a SHA-256 over both of its public keys.
type Pin [sha256.Size]byte

const pinPrefix = "pqt1_"

var pinEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// String is the pin's text form: "pqt1_" then 52 lower-case base32 letters.
func (p Pin) String() string { return pinPrefix + pinEncoding.EncodeToString(p[:]) }

// ParsePin parses the text form produced by Pin.String.
func ParsePin(s string) (Pin, error) {
	var p Pin
	s = strings.TrimSpace(s)
	body, ok := strings.CutPrefix(strings.ToLower(s), pinPrefix)
	if !ok {
		return p, fmt.Errorf("pin %q does not start with %q (print one with 'pqtunnel pin FILE')", s, pinPrefix)
	}
	raw, err := pinEncoding.DecodeString(body)
	// The last letter has spare bits; only the canonical spelling is a pin.
	if err != nil || len(raw) != len(p) || pinEncoding.EncodeToString(raw) != body {
		return p, fmt.Errorf("pin %q is malformed: want %s followed by 52 base32 letters", s, pinPrefix)
	}
	copy(p[:], raw)
	return p, nil
}

// ParsePins parses a comma-separated list of pins.
func ParsePins(s string) ([]Pin, error) {
	var out []Pin
	for _, f := range strings.Split(s, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		p, err := ParsePin(f)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// ErrNotIdentity is wrapped when a certificate is not a pqtunnel/2 pinned
// identity: its key is not ML-DSA-65 or ML-DSA-87, or it carries no
// Ed25519 key.
var ErrNotIdentity = errors.New("certificate is not a pqtunnel hybrid identity")

// PinOf computes the pin of a pinned identity's certificate: SHA-256 over a
// label, the Ed25519 SubjectPublicKeyInfo and the packed ML-DSA public
// key (ML-DSA-65, or ML-DSA-87 under the CNSA 2.0 profile; the length
// prefix keeps the two apart). These are the bytes pqtunnel/1 hashed (its certificate was the other
// way round), so an identity keeps its pin across versions.
func PinOf(cert *x509.Certificate) (Pin, error) {
	mlPub, ok := cert.PublicKey.(*mldsa.PublicKey)
	if !ok || mlPub.Parameters() != mldsa.MLDSA65() && mlPub.Parameters() != mldsa.MLDSA87() {
		return Pin{}, fmt.Errorf("%w: its key is %s, want ML-DSA-65 or ML-DSA-87", ErrNotIdentity, auth.KeyName(cert.PublicKey))
	}
	edPub, err := auth.Ed25519PublicKey(cert)
	if err != nil {
		return Pin{}, fmt.Errorf("%w: %w", ErrNotIdentity, err)
	}
	if edPub == nil {
		return Pin{}, fmt.Errorf("%w: it carries no Ed25519 key", ErrNotIdentity)
	}
	spki, err := x509.MarshalPKIXPublicKey(edPub)
	if err != nil {
		return Pin{}, fmt.Errorf("encode ed25519 key: %w", err)
	}
	return pinOfKeys(spki, mlPub.Bytes()), nil
}

func pinOfKeys(edSPKI, mlPub []byte) Pin {
	h := sha256.New()
	h.Write([]byte("pqtunnel pin v1\x00"))
	writeLenPrefixed(h, edSPKI)
	writeLenPrefixed(h, mlPub)
	var p Pin
	h.Sum(p[:0])
	return p
}

func writeLenPrefixed(h interface{ Write([]byte) (int, error) }, b []byte) {
	n := len(b)
	_, _ = h.Write([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}) // hash writes cannot fail
	_, _ = h.Write(b)
}

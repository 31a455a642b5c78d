package hybridtls

import (
	"crypto/ed25519"
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

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
)

// OIDMLDSA65Key is the certificate extension that carries a peer's ML-DSA-65
// public key, so that the pin can be checked inside the TLS handshake.
var OIDMLDSA65Key = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59735, 1, 1}

const (
	pemEd25519 = "PQTUNNEL ED25519 PRIVATE KEY"
	pemMLDSA   = "PQTUNNEL ML-DSA-65 SEED"
)

// Identity is a hybrid identity: an Ed25519 key that signs the TLS handshake
// and an ML-DSA-65 key that signs the TLS session afterwards, so that
// impersonating it requires breaking both.
type Identity struct {
	Ed25519 ed25519.PrivateKey
	MLDSA   *mldsa65.PrivateKey
	// Certificate is a self-signed certificate for Ed25519 carrying the
	// ML-DSA-65 public key in the OIDMLDSA65Key extension.
	Certificate tls.Certificate
	Pin         Pin
}

// GenerateIdentity creates a new random identity.
func GenerateIdentity() (*Identity, error) {
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	var seed [mldsa65.SeedSize]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("generate ml-dsa-65 seed: %w", err)
	}
	return newIdentity(edKey, &seed)
}

func newIdentity(edKey ed25519.PrivateKey, seed *[mldsa65.SeedSize]byte) (*Identity, error) {
	pub, mlKey := mldsa65.NewKeyFromSeed(seed)
	mlPub := pub.Bytes()
	extValue, err := asn1.Marshal(mlPub)
	if err != nil {
		return nil, fmt.Errorf("encode ml-dsa-65 extension: %w", err)
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
		ExtraExtensions: []pkix.Extension{{Id: OIDMLDSA65Key, Value: extValue}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, edKey.Public(), edKey)
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
		Certificate: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: edKey, Leaf: leaf},
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
	_ = pem.Encode(&b, &pem.Block{Type: pemEd25519, Bytes: pk8})           // strings.Builder cannot fail
	_ = pem.Encode(&b, &pem.Block{Type: pemMLDSA, Bytes: id.MLDSA.Seed()}) // same
	return []byte(b.String()), nil
}

// ParseIdentityPEM decodes an identity written by MarshalPEM.
func ParseIdentityPEM(data []byte) (*Identity, error) {
	var edKey ed25519.PrivateKey
	var seed *[mldsa65.SeedSize]byte
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
		case pemMLDSA:
			if seed != nil {
				return nil, errors.New("identity has two ML-DSA-65 keys")
			}
			if len(block.Bytes) != mldsa65.SeedSize {
				return nil, fmt.Errorf("identity ML-DSA-65 seed is %d bytes, want %d", len(block.Bytes), mldsa65.SeedSize)
			}
			seed = new([mldsa65.SeedSize]byte)
			copy(seed[:], block.Bytes)
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
		return nil, errors.New("identity has no ML-DSA-65 key")
	}
	return newIdentity(edKey, seed)
}

// LoadIdentityFile reads an identity file, refusing one that other users can
// read: a leaked identity lets anyone impersonate this side.
func LoadIdentityFile(path string) (*Identity, error) {
	if err := CheckKeyFileMode(path); err != nil {
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

// ParsePins parses a comma-separated PQT_PEERS list.
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

// mldsaKeyBytes returns the packed ML-DSA-65 key a certificate carries, or
// nil if it has no OIDMLDSA65Key extension.
func mldsaKeyBytes(cert *x509.Certificate) ([]byte, error) {
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(OIDMLDSA65Key) {
			continue
		}
		var raw []byte
		rest, err := asn1.Unmarshal(ext.Value, &raw)
		if err != nil || len(rest) != 0 {
			return nil, errors.New("certificate ML-DSA-65 extension is malformed")
		}
		if len(raw) != mldsa65.PublicKeySize {
			return nil, fmt.Errorf("certificate ML-DSA-65 key is %d bytes, want %d", len(raw), mldsa65.PublicKeySize)
		}
		return raw, nil
	}
	return nil, nil
}

// MLDSAPublicKey returns the ML-DSA-65 key a certificate carries, or nil if it
// has no OIDMLDSA65Key extension.
func MLDSAPublicKey(cert *x509.Certificate) (*mldsa65.PublicKey, error) {
	raw, err := mldsaKeyBytes(cert)
	if raw == nil || err != nil {
		return nil, err
	}
	var pk mldsa65.PublicKey
	if err := pk.UnmarshalBinary(raw); err != nil {
		return nil, fmt.Errorf("certificate ML-DSA-65 key: %w", err)
	}
	return &pk, nil
}

// PinOf computes the pin of a certificate: SHA-256 over a label, the
// certificate's SubjectPublicKeyInfo and its ML-DSA-65 public key.
// Hashing the packed key as carried avoids unpacking it, which is costly.
func PinOf(cert *x509.Certificate) (Pin, error) {
	pk, err := mldsaKeyBytes(cert)
	if err != nil {
		return Pin{}, err
	}
	if pk == nil {
		return Pin{}, errors.New("certificate has no ML-DSA-65 key: it is not a pqtunnel hybrid identity")
	}
	h := sha256.New()
	h.Write([]byte("pqtunnel pin v1\x00"))
	writeLenPrefixed(h, cert.RawSubjectPublicKeyInfo)
	writeLenPrefixed(h, pk)
	var p Pin
	h.Sum(p[:0])
	return p, nil
}

func writeLenPrefixed(h interface{ Write([]byte) (int, error) }, b []byte) {
	n := len(b)
	_, _ = h.Write([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}) // hash writes cannot fail
	_, _ = h.Write(b)
}

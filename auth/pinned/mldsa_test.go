package pinned

import (
	"bytes"
	"crypto/ed25519"
	"crypto/mldsa"
	"crypto/x509"
	"errors"
	"os"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
)

// identity-v1.pem was written by 'pqtunnel keygen' of pqtunnel/1, whose
// handshake key was the Ed25519 one; the pin is what that version printed.
const v1IdentityPin = "pqt1_ek4svhkot7f3vwm2hay2gd2jfaknpkwrxvkr5zmwvndbt4y7exqa"

func TestPQTunnel1IdentityFileLoadsWithItsPin(t *testing.T) {
	data, err := os.ReadFile("testdata/identity-v1.pem")
	if err != nil {
		t.Fatal(err)
	}
	id, err := ParseIdentityPEM(data)
	if err != nil {
		t.Fatalf("ParseIdentityPEM(pqtunnel/1 file): %v", err)
	}
	if id.Pin.String() != v1IdentityPin {
		t.Fatalf("pin = %s, want the pqtunnel/1 pin %s", id.Pin, v1IdentityPin)
	}
	again, err := id.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, data) {
		t.Errorf("MarshalPEM of a pqtunnel/1 identity differs from the file:\n%s\nwant\n%s", again, data)
	}
}

func TestIdentityCertificateIsMLDSA65SignedByEd25519(t *testing.T) {
	id := mustIdentity(t)
	leaf := id.Certificate.Leaf
	pub, ok := leaf.PublicKey.(*mldsa.PublicKey)
	if !ok || pub.Parameters() != mldsa.MLDSA65() || !pub.Equal(id.MLDSA.PublicKey()) {
		t.Fatalf("certificate key = %T, want the identity's ML-DSA-65 key", leaf.PublicKey)
	}
	if _, ok := id.Certificate.PrivateKey.(*mldsa.PrivateKey); !ok {
		t.Fatalf("tls.Certificate.PrivateKey = %T, want *mldsa.PrivateKey (it signs CertificateVerify)", id.Certificate.PrivateKey)
	}
	if leaf.SignatureAlgorithm != x509.PureEd25519 {
		t.Errorf("certificate signed with %v, want Ed25519", leaf.SignatureAlgorithm)
	}
	edPub, err := auth.Ed25519PublicKey(leaf)
	if err != nil || !edPub.Equal(id.Ed25519.Public()) {
		t.Fatalf("Ed25519 extension = %x, %v; want the identity's Ed25519 key", edPub, err)
	}
	if !ed25519.Verify(edPub, leaf.RawTBSCertificate, leaf.Signature) {
		t.Error("certificate signature does not verify with the identity's Ed25519 key")
	}
	// ML-DSA-65 key (1,952 B) plus an Ed25519 key and signature and the
	// usual fields; an ML-DSA-65 self-signature would add 3,245 bytes.
	if n := len(leaf.Raw); n > 2300 {
		t.Errorf("certificate is %d bytes, want under 2300", n)
	}
	t.Logf("identity certificate: %d bytes", len(leaf.Raw))
}

func TestPinOfRefusesNonIdentityCertificates(t *testing.T) {
	id := mustIdentity(t)
	withoutEd := *id.Certificate.Leaf
	withoutEd.Extensions = nil
	for name, cert := range map[string]*x509.Certificate{
		"ECDSA certificate":  testca.New(t, "plain").Cert,
		"no Ed25519 key ext": &withoutEd,
	} {
		if _, err := PinOf(cert); !errors.Is(err, ErrNotIdentity) {
			t.Errorf("%s: PinOf = %v, want ErrNotIdentity", name, err)
		}
	}
}

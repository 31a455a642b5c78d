package auth

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

// OIDEd25519Key is the certificate extension that carries a pinned
// identity's Ed25519 public key next to the ML-DSA key the certificate
// certifies, so that the pin can be checked inside the TLS handshake and
// the session proof after it verified against that key.
var OIDEd25519Key = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59735, 1, 2}

// Ed25519PublicKey returns the Ed25519 key a certificate carries in its
// OIDEd25519Key extension, or nil if it has none.
func Ed25519PublicKey(cert *x509.Certificate) (ed25519.PublicKey, error) {
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(OIDEd25519Key) {
			continue
		}
		var raw []byte
		rest, err := asn1.Unmarshal(ext.Value, &raw)
		if err != nil || len(rest) != 0 {
			return nil, errors.New("certificate Ed25519 extension is malformed")
		}
		if len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("certificate Ed25519 key is %d bytes, want %d", len(raw), ed25519.PublicKeySize)
		}
		return ed25519.PublicKey(raw), nil
	}
	return nil, nil
}

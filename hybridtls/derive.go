package hybridtls

import (
	"crypto/hkdf"
	"crypto/mldsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
)

// DeriveKey derives a 32-byte key for purpose from this side's private key
// (the identity's two keys, or in CA mode the certificate's key): the same
// material gives the same key in every process, so that a restarted
// process can prove it is the one its peers knew (a QUIC stateless reset
// key), and it reveals nothing of the private key. Different purposes give
// unrelated keys.
func (m *Material) DeriveKey(purpose string) ([32]byte, error) {
	var secret []byte
	switch {
	case m.Identity != nil:
		secret = append(append(secret, m.Identity.Ed25519.Seed()...), m.Identity.MLDSA.Bytes()...)
	case m.Certificate != nil && m.Certificate.PrivateKey != nil:
		if k, ok := m.Certificate.PrivateKey.(*mldsa.PrivateKey); ok {
			secret = k.Bytes()
			break
		}
		der, err := x509.MarshalPKCS8PrivateKey(m.Certificate.PrivateKey)
		if err != nil {
			return [32]byte{}, fmt.Errorf("derive %s key: encode private key: %w", purpose, err)
		}
		secret = der
	default:
		return [32]byte{}, errors.New("derive " + purpose + " key: no private key configured")
	}
	b, err := hkdf.Key(sha256.New, secret, nil, "pqtunnel derived key: "+purpose, 32)
	if err != nil {
		return [32]byte{}, fmt.Errorf("derive %s key: %w", purpose, err)
	}
	return [32]byte(b), nil
}

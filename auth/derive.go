package auth

import (
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
)

// DeriveKey derives a 32-byte key for purpose from a's Secret (the
// identity's two keys, or in CA mode the certificate's key): the same
// material gives the same key in every process, so that a restarted
// process can prove it is the one its peers knew (a QUIC stateless reset
// key), and it reveals nothing of the private key. Different purposes give
// unrelated keys.
func DeriveKey(a Authenticator, purpose string) ([32]byte, error) {
	secret, err := a.Secret()
	if err != nil {
		return [32]byte{}, fmt.Errorf("derive %s key: %w", purpose, err)
	}
	if secret == nil {
		return [32]byte{}, errors.New("derive " + purpose + " key: no private key configured")
	}
	b, err := hkdf.Key(sha256.New, secret, nil, "pqtunnel derived key: "+purpose, 32)
	if err != nil {
		return [32]byte{}, fmt.Errorf("derive %s key: %w", purpose, err)
	}
	return [32]byte(b), nil
}

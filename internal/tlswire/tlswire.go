// Package tlswire reads TLS 1.3 handshake messages off a captured TCP byte
// stream, decrypted with the secrets of an NSS key log (PQT_KEYLOG, or a
// tls.Config KeyLogWriter), so that tests check what was sent on the wire
// rather than what crypto/tls reports. It reads AES-GCM suites only, which
// is what Go negotiates on hardware with AES instructions.
package tlswire

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// Handshake message types (RFC 8446, section 4).
const (
	TypeClientHello       = 1
	TypeServerHello       = 2
	TypeCertificate       = 11
	TypeCertificateVerify = 15
)

// Key log labels of the handshake traffic secrets.
const (
	ClientHandshakeSecret = "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
	ServerHandshakeSecret = "SERVER_HANDSHAKE_TRAFFIC_SECRET"
)

// ErrUnsupportedSuite is returned for a cipher suite this package does not
// decrypt (ChaCha20-Poly1305).
var ErrUnsupportedSuite = errors.New("tlswire: cipher suite not supported")

// ClientRandom returns the random of the ClientHello that opens a
// client-to-server stream, which names the connection in a key log.
func ClientRandom(clientStream []byte) ([]byte, error) {
	// record header (5), handshake header (4), legacy_version (2), random (32)
	if len(clientStream) < 43 || clientStream[0] != 22 || clientStream[5] != TypeClientHello {
		return nil, errors.New("tlswire: stream does not start with a ClientHello record")
	}
	return clientStream[11:43], nil
}

// Secret returns the secret of label for the connection with clientRandom
// from an NSS key log.
func Secret(keylog string, label string, clientRandom []byte) ([]byte, error) {
	want := hex.EncodeToString(clientRandom)
	for _, line := range strings.Split(keylog, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == label && strings.EqualFold(f[1], want) {
			return hex.DecodeString(f[2])
		}
	}
	return nil, fmt.Errorf("tlswire: key log has no %s line for client random %s", label, want)
}

// CipherSuite returns the cipher suite a server-to-client stream's
// ServerHello selects.
func CipherSuite(serverStream []byte) (uint16, error) {
	// record header (5), handshake header (4), legacy_version (2), random (32), session id
	if len(serverStream) < 44 || serverStream[0] != 22 || serverStream[5] != TypeServerHello {
		return 0, errors.New("tlswire: stream does not start with a ServerHello record")
	}
	off := 44 + int(serverStream[43])
	if len(serverStream) < off+2 {
		return 0, errors.New("tlswire: truncated ServerHello")
	}
	return binary.BigEndian.Uint16(serverStream[off:]), nil
}

// HandshakeMessages decrypts the encrypted handshake records of one
// direction with that direction's handshake traffic secret and returns the
// messages in them by type (the body, without the 4-byte header). Records
// sent in the clear (hellos, ChangeCipherSpec) are skipped; decryption stops
// at the first record the handshake key does not open, the first one under
// the application traffic key.
func HandshakeMessages(suite uint16, secret, stream []byte) (map[byte][]byte, error) {
	var h func() hash.Hash
	var keyLen int
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		h, keyLen = sha256.New, 16
	case tls.TLS_AES_256_GCM_SHA384:
		h, keyLen = sha512.New384, 32
	default:
		return nil, fmt.Errorf("%w: %s", ErrUnsupportedSuite, tls.CipherSuiteName(suite))
	}
	key, err := expandLabel(h, secret, "key", keyLen)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	iv, err := expandLabel(h, secret, "iv", aead.NonceSize())
	if err != nil {
		return nil, err
	}
	var plain []byte
	for seq := uint64(0); len(stream) >= 5; {
		n := int(binary.BigEndian.Uint16(stream[3:5]))
		if len(stream) < 5+n {
			break
		}
		hdr, body := stream[:5], stream[5:5+n]
		stream = stream[5+n:]
		if hdr[0] != 23 { // not application_data: sent in the clear
			continue
		}
		nonce := append([]byte(nil), iv...)
		for i := range 8 {
			nonce[len(nonce)-1-i] ^= byte(seq >> (8 * i))
		}
		pt, err := aead.Open(nil, nonce, body, hdr)
		if err != nil {
			break
		}
		seq++
		// Strip the zero padding and the inner content type.
		end := len(pt) - 1
		for end > 0 && pt[end] == 0 {
			end--
		}
		if pt[end] == 22 {
			plain = append(plain, pt[:end]...)
		}
	}
	msgs := map[byte][]byte{}
	for len(plain) >= 4 {
		n := int(plain[1])<<16 | int(plain[2])<<8 | int(plain[3])
		if len(plain) < 4+n {
			return nil, fmt.Errorf("tlswire: truncated handshake message type %d", plain[0])
		}
		msgs[plain[0]] = plain[4 : 4+n]
		plain = plain[4+n:]
	}
	return msgs, nil
}

// CertificateVerifyScheme returns the signature scheme and signature length
// of a CertificateVerify message body.
func CertificateVerifyScheme(body []byte) (tls.SignatureScheme, int, error) {
	if len(body) < 4 {
		return 0, 0, errors.New("tlswire: truncated CertificateVerify")
	}
	n := int(binary.BigEndian.Uint16(body[2:4]))
	if len(body) != 4+n {
		return 0, 0, errors.New("tlswire: CertificateVerify length mismatch")
	}
	return tls.SignatureScheme(binary.BigEndian.Uint16(body)), n, nil
}

// expandLabel is HKDF-Expand-Label of RFC 8446, section 7.1, with an empty
// context.
func expandLabel(h func() hash.Hash, secret []byte, label string, n int) ([]byte, error) {
	full := "tls13 " + label
	info := binary.BigEndian.AppendUint16(nil, uint16(n))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0)
	return hkdf.Expand(h, secret, string(info), n)
}

// Verify is what a CertificateVerify on the wire says.
type Verify struct {
	Scheme       tls.SignatureScheme
	SignatureLen int
}

// CertificateVerifySchemes decrypts both directions of one captured TCP
// connection (client-to-server and server-to-client bytes) with keylog and
// returns each side's CertificateVerify, keyed "client" and "server".
func CertificateVerifySchemes(keylog string, clientStream, serverStream []byte) (map[string]Verify, error) {
	random, err := ClientRandom(clientStream)
	if err != nil {
		return nil, err
	}
	suite, err := CipherSuite(serverStream)
	if err != nil {
		return nil, err
	}
	out := map[string]Verify{}
	for _, dir := range []struct {
		side, label string
		stream      []byte
	}{
		{"client", ClientHandshakeSecret, clientStream},
		{"server", ServerHandshakeSecret, serverStream},
	} {
		secret, err := Secret(keylog, dir.label, random)
		if err != nil {
			return nil, err
		}
		msgs, err := HandshakeMessages(suite, secret, dir.stream)
		if err != nil {
			return nil, err
		}
		body, ok := msgs[TypeCertificateVerify]
		if !ok {
			continue
		}
		scheme, n, err := CertificateVerifyScheme(body)
		if err != nil {
			return nil, err
		}
		out[dir.side] = Verify{Scheme: scheme, SignatureLen: n}
	}
	return out, nil
}

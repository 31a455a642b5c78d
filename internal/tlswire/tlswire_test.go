package tlswire

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"testing"
)

func encodeVerify(s tls.SignatureScheme, sig []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(s))
	b = binary.BigEndian.AppendUint16(b, uint16(len(sig)))
	return append(b, sig...)
}

// FuzzParsers: no input makes a parser panic, and a CertificateVerify body
// that parses re-encodes to the same bytes.
func FuzzParsers(f *testing.F) {
	f.Add(encodeVerify(tls.MLDSA65, make([]byte, 3309)))
	f.Add(encodeVerify(tls.Ed25519, make([]byte, 64)))
	f.Add(append([]byte{23, 3, 3, 0, 20}, make([]byte, 20)...))
	f.Add(append([]byte{22, 3, 1, 0, 60, 1, 0, 0, 56, 3, 3}, make([]byte, 60)...))
	f.Add([]byte{})
	secret := bytes.Repeat([]byte{7}, 32)
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = ClientRandom(data)
		_, _ = CipherSuite(data)
		_, _ = HandshakeMessages(tls.TLS_AES_128_GCM_SHA256, secret, data)
		s, n, err := CertificateVerifyScheme(data)
		if err != nil {
			return
		}
		if again := encodeVerify(s, data[4:4+n]); !bytes.Equal(again, data) {
			t.Fatalf("CertificateVerify %x re-encodes to %x", data, again)
		}
	})
}

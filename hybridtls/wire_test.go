package hybridtls

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"net"
	"strings"
	"sync"
	"testing"
)

// This file reads TLS 1.3 handshake messages off the wire, decrypted with
// the secrets a KeyLogWriter wrote, so tests check what was sent rather
// than what crypto/tls reports.

const typeCertificateVerify = 15

// tapConn records the bytes a net.Conn sends and receives.
type tapConn struct {
	net.Conn
	mu             sync.Mutex
	sent, received []byte
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.received = append(c.received, p[:n]...)
	c.mu.Unlock()
	return n, err
}

func (c *tapConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.sent = append(c.sent, p[:n]...)
	c.mu.Unlock()
	return n, err
}

func (c *tapConn) captured() (sent, received []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.sent...), append([]byte(nil), c.received...)
}

// keyLogSecret returns the secret of the NSS key log line with label.
func keyLogSecret(t *testing.T, keylog, label string) []byte {
	t.Helper()
	for _, line := range strings.Split(keylog, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == label {
			b, err := hex.DecodeString(f[2])
			if err != nil {
				t.Fatalf("key log %s: %v", label, err)
			}
			return b
		}
	}
	t.Fatalf("key log has no %s line:\n%s", label, keylog)
	return nil
}

// hkdfExpandLabel is HKDF-Expand-Label of RFC 8446, section 7.1.
func hkdfExpandLabel(t *testing.T, h func() hash.Hash, secret []byte, label string, n int) []byte {
	t.Helper()
	full := "tls13 " + label
	info := binary.BigEndian.AppendUint16(nil, uint16(n))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0) // empty context
	out, err := hkdf.Expand(h, secret, string(info), n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// decryptHandshake decrypts the handshake records of one direction with
// that direction's handshake traffic secret and returns the handshake
// messages in them by type (body without the 4-byte header). Records
// before the first encrypted one (ClientHello, ServerHello,
// ChangeCipherSpec) are skipped; decryption stops at the first record the
// handshake key does not open, the first one under the traffic key.
func decryptHandshake(t *testing.T, suite uint16, secret, stream []byte) map[byte][]byte {
	t.Helper()
	var h func() hash.Hash
	var keyLen int
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		h, keyLen = sha256.New, 16
	case tls.TLS_AES_256_GCM_SHA384:
		h, keyLen = sha512.New384, 32
	default:
		t.Skipf("cipher suite %s: this decoder reads AES-GCM only", tls.CipherSuiteName(suite))
	}
	block, err := aes.NewCipher(hkdfExpandLabel(t, h, secret, "key", keyLen))
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	iv := hkdfExpandLabel(t, h, secret, "iv", aead.NonceSize())
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
		// Strip the padding and the inner content type.
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
			t.Fatalf("truncated handshake message type %d", plain[0])
		}
		msgs[plain[0]] = plain[4 : 4+n]
		plain = plain[4+n:]
	}
	return msgs
}

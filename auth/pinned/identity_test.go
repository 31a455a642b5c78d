package pinned

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/mldsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth"
)

func mustIdentity(t testing.TB) *Identity {
	t.Helper()
	id, err := GenerateIdentity()
	if err != nil {
		t.Fatalf("GenerateIdentity: %v", err)
	}
	return id
}

// identityBlocks returns the PEM blocks MarshalPEM writes for id, by type.
func identityBlocks(t testing.TB, id *Identity) (ed, ml *pem.Block) {
	t.Helper()
	data, err := id.MarshalPEM()
	if err != nil {
		t.Fatalf("MarshalPEM: %v", err)
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch b.Type {
		case pemEd25519:
			ed = b
		case pemMLDSA:
			ml = b
		default:
			t.Fatalf("MarshalPEM wrote unexpected block %q", b.Type)
		}
	}
	if ed == nil || ml == nil {
		t.Fatalf("MarshalPEM output lacks a block:\n%s", data)
	}
	return ed, ml
}

func encodeBlocks(blocks ...*pem.Block) []byte {
	var buf bytes.Buffer
	for _, b := range blocks {
		_ = pem.Encode(&buf, b) // bytes.Buffer cannot fail
	}
	return buf.Bytes()
}

func TestIdentityPEMRoundTripKeepsPin(t *testing.T) {
	id := mustIdentity(t)
	data, err := id.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), id.Pin.String()) {
		t.Errorf("MarshalPEM comment does not name the pin %s", id.Pin)
	}
	got, err := ParseIdentityPEM(data)
	if err != nil {
		t.Fatalf("ParseIdentityPEM: %v", err)
	}
	if got.Pin != id.Pin {
		t.Errorf("pin after round trip = %s, want %s", got.Pin, id.Pin)
	}
	if !got.Ed25519.Equal(id.Ed25519) {
		t.Error("Ed25519 key changed in round trip")
	}
	if !got.MLDSA.Equal(id.MLDSA) {
		t.Error("ML-DSA-65 key changed in round trip")
	}
	pin, err := PinOf(got.Certificate.Leaf)
	if err != nil {
		t.Fatalf("PinOf(parsed identity certificate): %v", err)
	}
	if pin != id.Pin {
		t.Errorf("PinOf(certificate) = %s, want %s", pin, id.Pin)
	}
}

func TestGenerateIdentityIsRandom(t *testing.T) {
	a, b := mustIdentity(t), mustIdentity(t)
	if a.Pin == b.Pin {
		t.Fatal("two generated identities share a pin")
	}
}

func TestPinCoversMLDSAKey(t *testing.T) {
	// Same Ed25519 key, different ML-DSA seed: the pin must differ.
	id := mustIdentity(t)
	seed := make([]byte, mldsa.PrivateKeySize)
	seed[0] = 1
	mlKey, err := mldsa.NewPrivateKey(mldsa.MLDSA65(), seed)
	if err != nil {
		t.Fatal(err)
	}
	other, err := newIdentity(id.Ed25519, mlKey)
	if err != nil {
		t.Fatal(err)
	}
	if other.Pin == id.Pin {
		t.Fatal("pin does not depend on the ML-DSA-65 key")
	}
}

func TestLoadIdentityFile(t *testing.T) {
	id := mustIdentity(t)
	data, err := id.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()

	accepted := []os.FileMode{0o600, 0o400}
	if os.Getuid() == 0 {
		accepted = append(accepted, 0o640) // root-owned, group-readable
	}
	for _, mode := range accepted {
		t.Run("mode "+mode.String()+" accepted", func(t *testing.T) {
			path := filepath.Join(dir, "ok.id")
			_ = os.Remove(path)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, mode); err != nil { // umask-proof
				t.Fatal(err)
			}
			got, err := LoadIdentityFile(path)
			if err != nil {
				t.Fatalf("LoadIdentityFile: %v", err)
			}
			if got.Pin != id.Pin {
				t.Errorf("pin = %s, want %s", got.Pin, id.Pin)
			}
		})
	}
	// Group-readable is accepted only for root-owned files (systemd
	// credentials, Kubernetes fsGroup); the file here is owned by the test's user.
	refused := []os.FileMode{0o644, 0o604, 0o606, 0o660, 0o620, 0o666}
	if os.Getuid() != 0 {
		refused = append(refused, 0o640)
	}
	for _, mode := range refused {
		t.Run("mode "+mode.String()+" refused", func(t *testing.T) {
			path := filepath.Join(dir, "open.id")
			_ = os.Remove(path)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadIdentityFile(path)
			if err == nil {
				t.Fatalf("LoadIdentityFile accepted a file with mode %v", mode)
			}
			if !strings.Contains(err.Error(), "chmod 600") {
				t.Errorf("error %q does not tell the user to chmod 600", err)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		if _, err := LoadIdentityFile(filepath.Join(dir, "nope.id")); err == nil {
			t.Fatal("LoadIdentityFile of a missing file succeeded")
		}
	})
	t.Run("garbage names the file", func(t *testing.T) {
		path := filepath.Join(dir, "garbage.id")
		if err := os.WriteFile(path, []byte("not an identity"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadIdentityFile(path)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("LoadIdentityFile(garbage) = %v, want an error naming %s", err, path)
		}
	})
}

func TestParseIdentityPEMErrors(t *testing.T) {
	id := mustIdentity(t)
	ed, ml := identityBlocks(t, id)
	shortSeed := &pem.Block{Type: pemMLDSA, Bytes: ml.Bytes[:len(ml.Bytes)-1]}
	longSeed := &pem.Block{Type: pemMLDSA, Bytes: append(bytes.Clone(ml.Bytes), 0)}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKCS8PrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []byte
		want string // substring of the error
	}{
		{"empty", nil, "no identity found"},
		{"not PEM", []byte("hello\n"), "no identity found"},
		{"missing ML-DSA block", encodeBlocks(ed), "no ML-DSA key"},
		{"missing Ed25519 block", encodeBlocks(ml), "no Ed25519 key"},
		{"duplicate Ed25519 block", encodeBlocks(ed, ml, ed), "two Ed25519"},
		{"duplicate ML-DSA block", encodeBlocks(ed, ml, ml), "two ML-DSA"},
		{"ML-DSA-65 and ML-DSA-87 blocks", encodeBlocks(ed, ml, &pem.Block{Type: pemMLDSA87, Bytes: ml.Bytes}), "two ML-DSA"},
		{"short seed", encodeBlocks(ed, shortSeed), "ML-DSA-65 seed is 31 bytes, want 32"},
		{"long seed", encodeBlocks(ed, longSeed), "seed is 33 bytes, want 32"},
		{"unknown PEM type", encodeBlocks(ed, ml, &pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), `unexpected PEM block "CERTIFICATE"`},
		{"Ed25519 block not PKCS#8", encodeBlocks(&pem.Block{Type: pemEd25519, Bytes: []byte{1, 2, 3}}, ml), "Ed25519 key"},
		{"Ed25519 block holds ECDSA", encodeBlocks(&pem.Block{Type: pemEd25519, Bytes: ecDER}, ml), "want Ed25519"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseIdentityPEM(tt.in)
			if err == nil {
				t.Fatalf("ParseIdentityPEM succeeded with pin %s", got.Pin)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestParseIdentityPEMIgnoresCommentsAndOrder(t *testing.T) {
	id := mustIdentity(t)
	ed, ml := identityBlocks(t, id)
	data := append([]byte("# a comment\n\n"), encodeBlocks(ml, ed)...)
	got, err := ParseIdentityPEM(data)
	if err != nil {
		t.Fatalf("ParseIdentityPEM(blocks swapped): %v", err)
	}
	if got.Pin != id.Pin {
		t.Errorf("pin = %s, want %s", got.Pin, id.Pin)
	}
}

func FuzzParseIdentityPEM(f *testing.F) {
	id := mustIdentity(f)
	data, err := id.MarshalPEM()
	if err != nil {
		f.Fatal(err)
	}
	ed, ml := identityBlocks(f, id)
	f.Add(data)
	f.Add(encodeBlocks(ed))
	f.Add(encodeBlocks(ml))
	f.Add(encodeBlocks(ml, ed))
	f.Add(encodeBlocks(ed, ml, ml))
	f.Add([]byte{})
	f.Add([]byte("-----BEGIN PQTUNNEL ML-DSA-65 SEED-----\n-----END PQTUNNEL ML-DSA-65 SEED-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := ParseIdentityPEM(data)
		if err != nil {
			if id != nil {
				t.Fatal("ParseIdentityPEM returned an identity with an error")
			}
			return
		}
		again, err := id.MarshalPEM()
		if err != nil {
			t.Fatalf("MarshalPEM of a parsed identity: %v", err)
		}
		id2, err := ParseIdentityPEM(again)
		if err != nil {
			t.Fatalf("re-parse of MarshalPEM output: %v", err)
		}
		if id2.Pin != id.Pin {
			t.Fatalf("pin changed in round trip: %s -> %s", id.Pin, id2.Pin)
		}
	})
}

// DeriveKey gives the same key for the same identity and purpose in every
// process, and unrelated keys for another purpose or another identity.
func TestDeriveKey(t *testing.T) {
	a, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	pemA, err := a.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseIdentityPEM(pemA)
	if err != nil {
		t.Fatal(err)
	}
	key := func(id *Identity, purpose string) [32]byte {
		t.Helper()
		k, err := auth.DeriveKey(&Authenticator{Identity: id}, purpose)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k := key(a, "quic stateless reset")
	if key(again, "quic stateless reset") != k {
		t.Error("the same identity, loaded again, derives another key")
	}
	if key(a, "another purpose") == k {
		t.Error("two purposes derive the same key")
	}
	if key(b, "quic stateless reset") == k {
		t.Error("two identities derive the same key")
	}
	if _, err := auth.DeriveKey(&Authenticator{}, "x"); err == nil {
		t.Error("an authenticator without a private key derives a key")
	}
}

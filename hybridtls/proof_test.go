package hybridtls

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func TestProofEncoding(t *testing.T) {
	client, _, c, _ := connectTLS(t)
	cs := c.ConnectionState()
	msg := mustProof(t, &cs, client.id.Ed25519, RoleClient)
	if len(msg) != proofHeader+ed25519.SignatureSize {
		t.Fatalf("proof is %d bytes, want %d", len(msg), proofHeader+ed25519.SignatureSize)
	}
	if string(msg[:4]) != "PQTP" || msg[4] != 2 || int(binary.BigEndian.Uint16(msg[5:7])) != ed25519.SignatureSize {
		t.Fatalf("proof header = %q", msg[:proofHeader])
	}
	empty, err := AppendProof([]byte("x"), nil, nil, RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	if want := "xPQTP\x02\x00\x00"; string(empty) != want {
		t.Fatalf("empty proof = %q, want %q", empty, want)
	}
	// ReadProof reads exactly one message, leaving what follows.
	r := bytes.NewReader(append(append(bytes.Clone(msg), empty[1:]...), "tail"...))
	sig, err := ReadProof(r)
	if err != nil || !bytes.Equal(sig, msg[proofHeader:]) {
		t.Fatalf("ReadProof(first) = %d bytes, %v", len(sig), err)
	}
	sig, err = ReadProof(r)
	if err != nil || len(sig) != 0 {
		t.Fatalf("ReadProof(empty) = %d bytes, %v", len(sig), err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "tail" {
		t.Fatalf("ReadProof consumed too much: rest %q", rest)
	}
}

func TestReadProofErrors(t *testing.T) {
	full := append([]byte("PQTP\x02"), binary.BigEndian.AppendUint16(nil, ed25519.SignatureSize)...)
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"short header", []byte("PQTP\x02\x00")},
		{"bad magic", []byte("PQTX\x02\x00\x00")},
		{"pqtunnel/1 version", []byte("PQTP\x01\x00\x00")},
		{"pqtunnel/1 ML-DSA-65 proof", append([]byte("PQTP\x01\x0c\xed"), make([]byte, 3309)...)},
		{"version zero", []byte("PQTP\x00\x00\x00")},
		{"length one", []byte("PQTP\x02\x00\x01x")},
		{"length max", append([]byte("PQTP\x02\xff\xff"), make([]byte, 1<<16)...)},
		{"ML-DSA-65 signature length", append([]byte("PQTP\x02\x0c\xed"), make([]byte, 3309)...)},
		{"length one short of a signature", append([]byte("PQTP\x02"), binary.BigEndian.AppendUint16(make([]byte, 0, 2), ed25519.SignatureSize-1)...)},
		{"signature truncated", append(full, make([]byte, ed25519.SignatureSize-1)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sig, err := ReadProof(bytes.NewReader(tt.in))
			if !errors.Is(err, ErrProof) {
				t.Fatalf("ReadProof = %d bytes, %v; want ErrProof", len(sig), err)
			}
		})
	}
}

// FuzzReadProof: ReadProof on any input never panics, never returns a
// signature longer than an Ed25519 signature, and consumes exactly the
// header plus the signature it returns.
func FuzzReadProof(f *testing.F) {
	client, _, c, _ := connectTLS(f)
	cs := c.ConnectionState()
	real := mustProof(f, &cs, client.id.Ed25519, RoleClient)
	f.Add(real)
	f.Add(append(bytes.Clone(real), "more"...))
	f.Add(real[:len(real)-1])
	f.Add([]byte("PQTP\x02\x00\x00"))
	f.Add([]byte("PQTP\x02\x00\x00trailing"))
	f.Add([]byte("PQTP\x01\x00\x00"))
	f.Add([]byte("PQTP\x02\xff\xff"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		sig, err := ReadProof(r)
		if err != nil {
			if !errors.Is(err, ErrProof) {
				t.Fatalf("ReadProof error %v does not wrap ErrProof", err)
			}
			return
		}
		if len(sig) > ed25519.SignatureSize {
			t.Fatalf("ReadProof returned %d bytes, more than a signature", len(sig))
		}
		if len(sig) != 0 && len(sig) != ed25519.SignatureSize {
			t.Fatalf("ReadProof returned a %d-byte signature", len(sig))
		}
		if consumed := len(data) - r.Len(); consumed != proofHeader+len(sig) {
			t.Fatalf("ReadProof consumed %d bytes for a %d-byte signature", consumed, len(sig))
		}
		if !bytes.Equal(sig, data[proofHeader:proofHeader+len(sig)]) {
			t.Fatal("ReadProof returned bytes that are not the input's signature")
		}
	})
}

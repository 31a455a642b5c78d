package hybridtls

import (
	"crypto/ed25519"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/pqtunnel/pqtunnel/auth"
)

// The proof message each side sends right after the TLS handshake:
//
//	"PQTP" | version (1 byte) | signature length (uint16, big endian) | signature
//
// The handshake's CertificateVerify already proved the ML-DSA-65 key; the
// proof adds the identity's Ed25519 key, so that a forger must break both.
// The signature is Ed25519ctx (RFC 8032) over TLS exported keying material
// with the sender's role as the context, so a proof is bound to one TLS
// session and cannot be reflected back to its sender. A zero-length
// signature means the sender has no pinned identity (CA mode).
const (
	proofMagic   = "PQTP"
	proofVersion = 2
	proofHeader  = len(proofMagic) + 1 + 2
	ekmLabel     = "EXPORTER-pqtunnel-ed25519-proof"
	ekmLength    = 32
)

// Role is the side of the TLS handshake, used as the proof's signing context.
type Role bool

const (
	RoleClient Role = true
	RoleServer Role = false
)

func (r Role) context() string {
	if r == RoleClient {
		return "pqtunnel/2 proof client"
	}
	return "pqtunnel/2 proof server"
}

// ErrProof is wrapped by every failure of the peer's Ed25519 proof.
var ErrProof error = auth.NewRefusal("proof_failed", "Ed25519 session proof failed")

func channelBinding(cs *tls.ConnectionState) ([]byte, error) {
	ekm, err := cs.ExportKeyingMaterial(ekmLabel, nil, ekmLength)
	if err != nil {
		return nil, fmt.Errorf("export keying material: %w", err)
	}
	return ekm, nil
}

// AppendProof appends a proof message signed by key (nil for none) to dst.
func AppendProof(dst []byte, cs *tls.ConnectionState, key ed25519.PrivateKey, role Role) ([]byte, error) {
	dst = append(dst, proofMagic...)
	dst = append(dst, proofVersion)
	if key == nil {
		return binary.BigEndian.AppendUint16(dst, 0), nil
	}
	ekm, err := channelBinding(cs)
	if err != nil {
		return nil, err
	}
	sig, err := key.Sign(nil, ekm, &ed25519.Options{Context: role.context()})
	if err != nil {
		return nil, fmt.Errorf("sign proof: %w", err)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(sig)))
	return append(dst, sig...), nil
}

// ReadProof reads one proof message and returns its signature, empty when
// the sender has no pinned identity. It reads at most one bounded message.
func ReadProof(r io.Reader) ([]byte, error) {
	var hdr [proofHeader]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: read proof: %w", ErrProof, err)
	}
	return parseProofHeader(hdr[:], r)
}

func parseProofHeader(hdr []byte, r io.Reader) ([]byte, error) {
	if string(hdr[:4]) != proofMagic {
		return nil, fmt.Errorf("%w: peer did not send a pqtunnel proof (is it a pqtunnel of a matching version?)", ErrProof)
	}
	if hdr[4] != proofVersion {
		return nil, fmt.Errorf("%w: proof version %d not supported (want %d)", ErrProof, hdr[4], proofVersion)
	}
	n := int(binary.BigEndian.Uint16(hdr[5:]))
	if n != 0 && n != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: proof signature is %d bytes, want %d", ErrProof, n, ed25519.SignatureSize)
	}
	sig := make([]byte, n)
	if _, err := io.ReadFull(r, sig); err != nil {
		return nil, fmt.Errorf("%w: read proof signature: %w", ErrProof, err)
	}
	return sig, nil
}

// VerifyProof checks a peer's signature against the Ed25519 key its
// certificate carries. A peer that proves (proves true, a pinned identity)
// must sign; any other (CA mode) must send no signature, since its
// certificate carries no Ed25519 key of ours.
func VerifyProof(cs *tls.ConnectionState, sig []byte, peerRole Role, proves bool) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: peer presented no certificate", ErrProof)
	}
	if !proves {
		if len(sig) != 0 {
			return fmt.Errorf("%w: CA-mode peer sent a pinned identity's proof", ErrProof)
		}
		return nil
	}
	pk, err := auth.Ed25519PublicKey(cs.PeerCertificates[0])
	if err != nil {
		return fmt.Errorf("%w: %w", ErrProof, err)
	}
	if pk == nil {
		return fmt.Errorf("%w: peer certificate carries no Ed25519 key", ErrProof)
	}
	if len(sig) == 0 {
		return fmt.Errorf("%w: peer is a pinned identity but sent no signature", ErrProof)
	}
	ekm, err := channelBinding(cs)
	if err != nil {
		return err
	}
	if err := ed25519.VerifyWithOptions(pk, ekm, sig, &ed25519.Options{Context: peerRole.context()}); err != nil {
		return fmt.Errorf("%w: signature does not verify for this session: %w", ErrProof, err)
	}
	return nil
}

package hybridtls

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
)

// The proof message each side sends right after the TLS handshake:
//
//	"PQTP" | version (1 byte) | signature length (uint16, big endian) | signature
//
// The signature is ML-DSA-65 over TLS exported keying material, with the
// sender's role as the signing context, so a proof is bound to one TLS
// session and cannot be reflected back to its sender. A zero-length signature
// means the sender has no ML-DSA key (CA mode with classical certificates).
const (
	proofMagic   = "PQTP"
	proofVersion = 1
	proofHeader  = len(proofMagic) + 1 + 2
	ekmLabel     = "EXPORTER-pqtunnel-mldsa65-proof"
	ekmLength    = 32
)

// Role is the side of the TLS handshake, used as the ML-DSA signing context.
type Role bool

const (
	RoleClient Role = true
	RoleServer Role = false
)

func (r Role) context() []byte {
	if r == RoleClient {
		return []byte("pqtunnel proof client")
	}
	return []byte("pqtunnel proof server")
}

// ErrProof is wrapped by every failure of the peer's ML-DSA-65 proof.
var ErrProof error = &RefusalError{"proof_failed", "ML-DSA-65 proof failed"}

func channelBinding(cs *tls.ConnectionState) ([]byte, error) {
	ekm, err := cs.ExportKeyingMaterial(ekmLabel, nil, ekmLength)
	if err != nil {
		return nil, fmt.Errorf("export keying material: %w", err)
	}
	return ekm, nil
}

// AppendProof appends a proof message signed by key (nil for none) to dst.
func AppendProof(dst []byte, cs *tls.ConnectionState, key *mldsa65.PrivateKey, role Role) ([]byte, error) {
	dst = append(dst, proofMagic...)
	dst = append(dst, proofVersion)
	if key == nil {
		return binary.BigEndian.AppendUint16(dst, 0), nil
	}
	ekm, err := channelBinding(cs)
	if err != nil {
		return nil, err
	}
	sig := make([]byte, mldsa65.SignatureSize)
	if err := mldsa65.SignTo(key, ekm, role.context(), true, sig); err != nil {
		return nil, fmt.Errorf("sign proof: %w", err)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(sig)))
	return append(dst, sig...), nil
}

// ReadProof reads one proof message and returns its signature, empty when
// the sender has no ML-DSA key. It reads at most one bounded message.
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
	if n != 0 && n != mldsa65.SignatureSize {
		return nil, fmt.Errorf("%w: proof signature is %d bytes, want %d", ErrProof, n, mldsa65.SignatureSize)
	}
	sig := make([]byte, n)
	if _, err := io.ReadFull(r, sig); err != nil {
		return nil, fmt.Errorf("%w: read proof signature: %w", ErrProof, err)
	}
	return sig, nil
}

// VerifyProof checks a peer's signature against its certificate's ML-DSA-65
// key. It returns whether the peer proved a post-quantum key; a certificate
// without one is accepted only when requirePQ is false.
func VerifyProof(cs *tls.ConnectionState, sig []byte, peerRole Role, requirePQ bool) (bool, error) {
	if len(cs.PeerCertificates) == 0 {
		return false, fmt.Errorf("%w: peer presented no certificate", ErrProof)
	}
	pk, err := MLDSAPublicKey(cs.PeerCertificates[0])
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrProof, err)
	}
	if pk == nil {
		if requirePQ {
			return false, fmt.Errorf("%w: peer certificate carries no ML-DSA-65 key", ErrProof)
		}
		if len(sig) != 0 {
			return false, fmt.Errorf("%w: peer sent a signature but its certificate has no ML-DSA-65 key", ErrProof)
		}
		return false, nil
	}
	if len(sig) == 0 {
		return false, fmt.Errorf("%w: peer certificate carries an ML-DSA-65 key but the peer sent no signature", ErrProof)
	}
	ekm, err := channelBinding(cs)
	if err != nil {
		return false, err
	}
	if !mldsa65.Verify(pk, ekm, peerRole.context(), sig) {
		return false, fmt.Errorf("%w: signature does not verify for this session", ErrProof)
	}
	return true, nil
}

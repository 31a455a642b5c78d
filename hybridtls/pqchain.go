package hybridtls

import (
	"crypto/mldsa"
	"crypto/x509"
	"fmt"
)

// ErrClassicalAuth is wrapped when Policy.RequirePQAuth (PQT_AUTH=pq)
// refuses a peer whose certificate chain is not ML-DSA end to end. It is a
// kind of ErrPeerNotAllowed: the chain verifies, the policy refuses it.
var ErrClassicalAuth = fmt.Errorf("%w: only ML-DSA certificate chains are accepted", ErrPeerNotAllowed)

// ErrNotCNSA2 is wrapped when Policy.RequireMLDSA87 (PQT_PROFILE=cnsa2)
// refuses a peer that authenticates with ML-DSA below ML-DSA-87.
var ErrNotCNSA2 = fmt.Errorf("%w: only ML-DSA-87 is accepted", ErrPeerNotAllowed)

// settingRefusal is a refusal of kind (ErrClassicalAuth, ErrNotCNSA2)
// whose text names the setting behind it in the caller's terms.
type settingRefusal struct {
	kind error
	text string
}

func (e *settingRefusal) Error() string { return e.text }
func (e *settingRefusal) Unwrap() error { return e.kind }

// refuseBy is a refusal of kind by setting s, which accepts only what
// accepts says, for the reason why.
func (p *Policy) refuseBy(kind error, s Setting, accepts, why string) error {
	return &settingRefusal{kind: kind, text: fmt.Sprintf("%v: %s accepts only %s: %s", ErrPeerNotAllowed, p.name(s), accepts, why)}
}

// ChainMLDSA87 reports whether every key of chain is ML-DSA-87 and every
// certificate below the root is signed with ML-DSA-87, as CNSA 2.0 asks;
// a pinned identity's chain is its certificate alone, whose Ed25519
// self-signature nobody relies on.
func ChainMLDSA87(chain []*x509.Certificate) (ok bool, why string) {
	if len(chain) == 0 {
		return false, "no verified chain"
	}
	for i, c := range chain {
		if k, isML := c.PublicKey.(*mldsa.PublicKey); !isML || k.Parameters() != mldsa.MLDSA87() {
			return false, fmt.Sprintf("%s %q: %s key", chainRole(i, len(chain)), certName(c), keyName(c.PublicKey))
		}
		if i < len(chain)-1 && c.SignatureAlgorithm != x509.MLDSA87 {
			return false, fmt.Sprintf("%s %q: signed with %s", chainRole(i, len(chain)), certName(c), c.SignatureAlgorithm)
		}
	}
	return true, ""
}

// ChainPQ reports whether a verified chain (leaf first, trusted root last)
// is post-quantum end to end: every key in it is ML-DSA, so every signature
// from the leaf's CertificateVerify up to the root is ML-DSA. The root's
// signature on itself is not checked by anyone and does not count. When
// the chain is not, why says which certificate is classical.
func ChainPQ(chain []*x509.Certificate) (pq bool, why string) {
	if len(chain) == 0 {
		return false, "no verified chain"
	}
	for i, c := range chain {
		if _, ok := c.PublicKey.(*mldsa.PublicKey); !ok {
			return false, fmt.Sprintf("%s %q: %s key", chainRole(i, len(chain)), certName(c), keyName(c.PublicKey))
		}
		if i < len(chain)-1 && !isMLDSASignature(c.SignatureAlgorithm) {
			return false, fmt.Sprintf("%s %q: signed with %s", chainRole(i, len(chain)), certName(c), c.SignatureAlgorithm)
		}
	}
	return true, ""
}

// chainsPQ is ChainPQ over the chains x509 built: one ML-DSA chain to a
// trusted root suffices, since that is a path an attacker cannot forge
// without breaking ML-DSA; otherwise why is the first chain's reason.
func chainsPQ(chains [][]*x509.Certificate) (pq bool, why string) {
	if len(chains) == 0 {
		return false, "no verified chain"
	}
	for _, ch := range chains {
		if ok, _ := ChainPQ(ch); ok {
			return true, ""
		}
	}
	return ChainPQ(chains[0])
}

func chainRole(i, n int) string {
	switch i {
	case 0:
		return "leaf"
	case n - 1:
		return "root"
	}
	return "intermediate"
}

func isMLDSASignature(a x509.SignatureAlgorithm) bool {
	return a == x509.MLDSA44 || a == x509.MLDSA65 || a == x509.MLDSA87
}

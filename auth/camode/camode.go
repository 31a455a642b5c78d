// Package camode is the authentication mode of fleets: each side presents
// a certificate a CA signed and accepts the peers whose certificate
// chains verify against its CAs and that its allow rules (by SAN DNS name,
// URI or common name) accept. It holds the allow rules, the chain checks
// and the Authenticator that applies them.
package camode

import (
	"crypto/ed25519"
	"crypto/mldsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/auth"
)

// Authenticator authenticates certificates a CA signed: chains verified
// against CAs, peers named by the Allow rules, no session proof.
type Authenticator struct {
	// Certificate is what this side presents, with its private key.
	Certificate *tls.Certificate
	// CAs sign the peers' certificates.
	CAs *x509.CertPool
	// Allow accepts peers by their certificate's names; none accepts
	// every certificate CAs signed, unless AllowListed.
	Allow []AllowRule
	// AllowListed makes an empty Allow accept nobody rather than every
	// certificate the CA signed: the rules came from a file (PQT_ALLOW
	// naming one), and an emptied file revokes everyone, as an emptied
	// pins file does.
	AllowListed bool
}

var _ auth.Authenticator = (*Authenticator)(nil)

// ErrBadCertificate is wrapped when a peer certificate does not verify:
// expired, signed by another CA, or not for client use.
var ErrBadCertificate error = auth.NewRefusal("bad_certificate", "peer certificate does not verify")

// ErrClassicalAuth is wrapped when auth.Policy.RequirePQAuth (PQT_AUTH=pq)
// refuses a peer whose certificate chain is not ML-DSA end to end. It is a
// kind of auth.ErrPeerNotAllowed: the chain verifies, the policy refuses it.
var ErrClassicalAuth = fmt.Errorf("%w: only ML-DSA certificate chains are accepted", auth.ErrPeerNotAllowed)

// Validate needs a certificate and the CAs that sign the peer's.
func (a *Authenticator) Validate() error {
	switch {
	case a.Certificate == nil:
		return errors.New("no identity: configure a pinned identity or CA certificates")
	case a.CAs == nil:
		return errors.New("a CA certificate needs the CA that signs the peer's certificate")
	}
	return nil
}

func (a *Authenticator) LocalCertificate() tls.Certificate { return *a.Certificate }

func (a *Authenticator) ConfigureClient(c *tls.Config, p *auth.Policy, host string) {
	c.RootCAs = a.CAs
	c.ServerName = p.ServerName
	if c.ServerName == "" {
		c.ServerName = host
	}
}

func (a *Authenticator) Chains(certs []*x509.Certificate, usage x509.ExtKeyUsage, p *auth.Policy) ([][]*x509.Certificate, error) {
	if len(certs) == 0 {
		return nil, nil
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{
		Roots: a.CAs, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return nil, fmt.Errorf("%w against %s: %w", ErrBadCertificate, p.NameOf(auth.SettingCAs), err)
	}
	return chains, nil
}

func (a *Authenticator) Accept(certs []*x509.Certificate, chains [][]*x509.Certificate, p *auth.Policy) (string, error) {
	leaf := certs[0]
	if p.RequirePQAuth {
		if pq, why := chainsPQ(chains); !pq {
			return "", p.RefuseBy(ErrClassicalAuth, auth.SettingPQAuth, "ML-DSA certificate chains", why)
		}
	}
	if p.RequireMLDSA87 {
		ok, why := false, "no verified chain"
		for _, ch := range chains {
			if ok, why = auth.ChainMLDSA87(ch); ok {
				break
			}
		}
		if !ok {
			return "", p.RefuseBy(auth.ErrNotCNSA2, auth.SettingProfile, "ML-DSA-87", why)
		}
	}
	if len(a.Allow) == 0 && !a.AllowListed {
		return auth.CertName(leaf), nil
	}
	// The first matching named rule names the peer, so that a name in a
	// route's allow list never depends on the order of unnamed rules.
	matched := false
	for _, r := range a.Allow {
		if r.Match(leaf) {
			if r.Name != "" {
				return r.Name, nil
			}
			matched = true
		}
	}
	if matched {
		return auth.CertName(leaf), nil
	}
	return "", fmt.Errorf("%w: certificate %q matches no %s rule", auth.ErrPeerNotAllowed, auth.CertName(leaf), p.NameOf(auth.SettingAllow))
}

// ProofKey is nil: the certificate carries no Ed25519 key of ours, so the
// proof is empty.
func (*Authenticator) ProofKey() ed25519.PrivateKey { return nil }

func (*Authenticator) PeerProves() bool { return false }

func (*Authenticator) PQAuth(chains [][]*x509.Certificate) (bool, string) { return chainsPQ(chains) }

// chainsPQ is auth.ChainPQ over the chains x509 built: one ML-DSA chain to
// a trusted root suffices, since that is a path an attacker cannot forge
// without breaking ML-DSA; otherwise why is the first chain's reason.
func chainsPQ(chains [][]*x509.Certificate) (pq bool, why string) {
	if len(chains) == 0 {
		return false, "no verified chain"
	}
	for _, ch := range chains {
		if ok, _ := auth.ChainPQ(ch); ok {
			return true, ""
		}
	}
	return auth.ChainPQ(chains[0])
}

// Secret is the certificate's private key: an ML-DSA key's seed, any
// other in PKCS #8.
func (a *Authenticator) Secret() ([]byte, error) {
	if a.Certificate == nil || a.Certificate.PrivateKey == nil {
		return nil, nil
	}
	if k, ok := a.Certificate.PrivateKey.(*mldsa.PrivateKey); ok {
		return k.Bytes(), nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(a.Certificate.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return der, nil
}

// Name is the certificate's common name.
func (a *Authenticator) Name() string {
	if a.Certificate != nil && a.Certificate.Leaf != nil {
		return a.Certificate.Leaf.Subject.CommonName
	}
	return "(CA certificate)"
}

// Defines reports whether name is a named Allow rule's.
func (a *Authenticator) Defines(name string) bool {
	for _, r := range a.Allow {
		if r.Name != "" && r.Name == name {
			return true
		}
	}
	return false
}

// AcceptsSeveral is true for anything but a single rule for one exact name.
func (a *Authenticator) AcceptsSeveral() bool {
	return len(a.Allow) != 1 || a.Allow[0].Kind == "dns" && strings.HasPrefix(a.Allow[0].Value, "*.")
}

// PeerSet is the Allow rules; none from a file accepts nobody.
func (a *Authenticator) PeerSet() auth.PeerSet {
	return auth.PeerSet{Setting: auth.SettingAllow, Listed: len(a.Allow), Nobody: a.AllowListed && len(a.Allow) == 0}
}

// PeerExpiry is the earliest NotAfter of the certificates the peer sent:
// the handshake checked the dates only once, and a tunnel may live for months.
func (*Authenticator) PeerExpiry(certs []*x509.Certificate) (time.Time, bool) {
	if len(certs) == 0 {
		return time.Time{}, false
	}
	notAfter := certs[0].NotAfter
	for _, c := range certs[1:] {
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return notAfter, true
}

// CheckMLDSA87 refuses a certificate whose key or signature is not ML-DSA-87.
func (a *Authenticator) CheckMLDSA87() error {
	leaf := a.Certificate.Leaf
	if k, ok := leaf.PublicKey.(*mldsa.PublicKey); !ok || k.Parameters() != mldsa.MLDSA87() || leaf.SignatureAlgorithm != x509.MLDSA87 {
		return &auth.ProfileError{Setting: auth.SettingCert,
			Have: fmt.Sprintf("the certificate's key is %s and it is signed with %s", auth.SignatureSchemeName(auth.SignatureScheme(leaf)), leaf.SignatureAlgorithm),
			Need: "ML-DSA-87 for both", Fix: "e.g. from 'pqtunnel ca init -alg ML-DSA-87'"}
	}
	return nil
}

// Advice speaks of certificates, CAs and allow rules.
func (a *Authenticator) Advice(name func(auth.Setting) string) auth.Advice {
	return auth.Advice{
		Credential: "certificate",
		Accept:     "add a " + name(auth.SettingAllow) + " rule for its certificate name",
		Rejected:   "certificate " + a.Name() + ": check that its " + name(auth.SettingCAs) + " signs our " + name(auth.SettingCert) + " and its " + name(auth.SettingAllow) + " names us",
	}
}

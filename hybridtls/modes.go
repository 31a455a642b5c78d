package hybridtls

import (
	"crypto/ed25519"
	"crypto/mldsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
)

// mode is an authentication mode: what this side presents in the
// handshake, how it verifies, accepts and names its peer, and what the
// session proof after the handshake carries. The Store runs the
// key-exchange policy and the proof exchange around it and asks the
// Material's mode for everything else; a new mode is a type implementing
// mode, its fields in Material and its case in Material.mode.
type mode interface {
	// certificate is what this side presents.
	certificate() tls.Certificate
	// configureClient sets in c how a client has crypto/tls check the
	// server's chain, before VerifyConnection runs; host is the name dialled.
	configureClient(c *tls.Config, p *Policy, host string)
	// chains verifies the peer's certificates for usage and returns the
	// verified chains; a mode without chains returns none and no error.
	chains(certs []*x509.Certificate, usage x509.ExtKeyUsage, p *Policy) ([][]*x509.Certificate, error)
	// accept applies this side's rules to a peer whose chains verified
	// and whose certificates are not empty, and returns the peer's name
	// from this side's configuration.
	accept(certs []*x509.Certificate, chains [][]*x509.Certificate, p *Policy) (string, error)
	// proofKey signs this side's session proof; nil sends an empty one.
	proofKey() ed25519.PrivateKey
	// peerProves reports whether the peer must sign its session proof.
	peerProves() bool
	// pqAuth reports whether an accepted peer authenticated with ML-DSA
	// throughout, and when not, which certificate is classical.
	pqAuth(chains [][]*x509.Certificate) (bool, string)
	// secret is this side's private key material, from which DeriveKey
	// derives its keys; nil when none is configured.
	secret() ([]byte, error)
	// name, defines and acceptsSeveral are Material.Name, Defines and
	// AcceptsSeveral.
	name() string
	defines(name string) bool
	acceptsSeveral() bool
}

// mode returns the authentication mode m configures; Validate has
// checked that it configures exactly one.
func (m *Material) mode() mode {
	if m.Identity != nil {
		return pinnedMode{m}
	}
	return caMode{m}
}

// pinnedMode authenticates hybrid identities by their pins (Identity,
// Peers, Names): no CA, the ML-DSA key checked in the handshake and the
// Ed25519 key by the session proof.
type pinnedMode struct{ m *Material }

func (pm pinnedMode) certificate() tls.Certificate { return pm.m.Identity.Certificate }

func (pinnedMode) configureClient(c *tls.Config, _ *Policy, _ string) {
	// The pin, checked in VerifyConnection, replaces chain validation.
	c.InsecureSkipVerify = true
	c.ServerName = "pqtunnel"
}

func (pinnedMode) chains([]*x509.Certificate, x509.ExtKeyUsage, *Policy) ([][]*x509.Certificate, error) {
	return nil, nil
}

func (pm pinnedMode) accept(certs []*x509.Certificate, _ [][]*x509.Certificate, p *Policy) (string, error) {
	leaf := certs[0]
	pin, err := PinOf(leaf)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrPeerNotAllowed, err)
	}
	if !slices.Contains(pm.m.Peers, pin) {
		return "", fmt.Errorf("%w: pin %s is not in %s", ErrPeerNotAllowed, pin, p.name(SettingPeers))
	}
	if p.RequireMLDSA87 {
		if ok, why := ChainMLDSA87([]*x509.Certificate{leaf}); !ok {
			return "", p.refuseBy(ErrNotCNSA2, SettingProfile, "ML-DSA-87", why+" (the peer needs an identity from 'pqtunnel keygen --profile cnsa2')")
		}
	}
	return pm.m.PeerName(pin), nil
}

func (pm pinnedMode) proofKey() ed25519.PrivateKey { return pm.m.Identity.Ed25519 }

func (pinnedMode) peerProves() bool { return true }

// pqAuth is always true: PinOf accepts only ML-DSA-65 and ML-DSA-87 keys.
func (pinnedMode) pqAuth([][]*x509.Certificate) (bool, string) { return true, "" }

// secret is both keys of the identity.
func (pm pinnedMode) secret() ([]byte, error) {
	return append(pm.m.Identity.Ed25519.Seed(), pm.m.Identity.MLDSA.Bytes()...), nil
}

func (pm pinnedMode) name() string { return pm.m.Identity.Pin.String() }

func (pm pinnedMode) defines(name string) bool {
	for _, p := range pm.m.Peers {
		if pm.m.PeerName(p) == name {
			return true
		}
	}
	return false
}

func (pm pinnedMode) acceptsSeveral() bool { return len(pm.m.Peers) > 1 }

// caMode authenticates certificates a CA signed (Certificate, CAs,
// Allow, AllowListed): chains verified against CAs, peers named by the
// Allow rules, no session proof.
type caMode struct{ m *Material }

func (cm caMode) certificate() tls.Certificate { return *cm.m.Certificate }

func (cm caMode) configureClient(c *tls.Config, p *Policy, host string) {
	c.RootCAs = cm.m.CAs
	c.ServerName = p.ServerName
	if c.ServerName == "" {
		c.ServerName = host
	}
}

func (cm caMode) chains(certs []*x509.Certificate, usage x509.ExtKeyUsage, p *Policy) ([][]*x509.Certificate, error) {
	if len(certs) == 0 {
		return nil, nil
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{
		Roots: cm.m.CAs, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return nil, fmt.Errorf("%w against %s: %w", ErrBadCertificate, p.name(SettingCAs), err)
	}
	return chains, nil
}

func (cm caMode) accept(certs []*x509.Certificate, chains [][]*x509.Certificate, p *Policy) (string, error) {
	leaf := certs[0]
	if p.RequirePQAuth {
		if pq, why := chainsPQ(chains); !pq {
			return "", p.refuseBy(ErrClassicalAuth, SettingPQAuth, "ML-DSA certificate chains", why)
		}
	}
	if p.RequireMLDSA87 {
		ok, why := false, "no verified chain"
		for _, ch := range chains {
			if ok, why = ChainMLDSA87(ch); ok {
				break
			}
		}
		if !ok {
			return "", p.refuseBy(ErrNotCNSA2, SettingProfile, "ML-DSA-87", why)
		}
	}
	if len(cm.m.Allow) == 0 && !cm.m.AllowListed {
		return certName(leaf), nil
	}
	// The first matching named rule names the peer, so that a name in a
	// route's allow list never depends on the order of unnamed rules.
	matched := false
	for _, r := range cm.m.Allow {
		if r.Match(leaf) {
			if r.Name != "" {
				return r.Name, nil
			}
			matched = true
		}
	}
	if matched {
		return certName(leaf), nil
	}
	return "", fmt.Errorf("%w: certificate %q matches no %s rule", ErrPeerNotAllowed, certName(leaf), p.name(SettingAllow))
}

// proofKey is nil: the certificate carries no Ed25519 key of ours, so the
// proof is empty.
func (caMode) proofKey() ed25519.PrivateKey { return nil }

func (caMode) peerProves() bool { return false }

func (caMode) pqAuth(chains [][]*x509.Certificate) (bool, string) { return chainsPQ(chains) }

// secret is the certificate's private key: an ML-DSA key's seed, any
// other in PKCS #8.
func (cm caMode) secret() ([]byte, error) {
	if cm.m.Certificate == nil || cm.m.Certificate.PrivateKey == nil {
		return nil, nil
	}
	if k, ok := cm.m.Certificate.PrivateKey.(*mldsa.PrivateKey); ok {
		return k.Bytes(), nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(cm.m.Certificate.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return der, nil
}

func (cm caMode) name() string {
	if cm.m.Certificate != nil && cm.m.Certificate.Leaf != nil {
		return cm.m.Certificate.Leaf.Subject.CommonName
	}
	return "(CA certificate)"
}

func (cm caMode) defines(name string) bool {
	for _, r := range cm.m.Allow {
		if r.Name != "" && r.Name == name {
			return true
		}
	}
	return false
}

// acceptsSeveral is true for anything but a single rule for one exact name.
func (cm caMode) acceptsSeveral() bool {
	a := cm.m.Allow
	return len(a) != 1 || a[0].Kind == "dns" && strings.HasPrefix(a[0].Value, "*.")
}

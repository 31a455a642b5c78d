// Package pinned is the authentication mode of two parties without a CA:
// each side has a hybrid identity (an ML-DSA key that signs the TLS
// handshake and an Ed25519 key that signs the session after it) and
// accepts the peers whose pins, a hash over both public keys, it lists.
// It holds the identities, their files and pins, and the Authenticator
// that checks them.
package pinned

import (
	"crypto/ed25519"
	"crypto/mldsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/pqtunnel/pqtunnel/auth"
)

// Authenticator authenticates hybrid identities by their pins: no CA, the
// ML-DSA key checked in the handshake and the Ed25519 key by the session
// proof.
type Authenticator struct {
	// Identity is this side's hybrid identity.
	Identity *Identity
	// Peers are the pins this side accepts; none accepts nobody.
	Peers []Pin
	// Names gives some of Peers a name from configuration; a pin without
	// one is named by its text form.
	Names map[Pin]string
}

var _ auth.Authenticator = (*Authenticator)(nil)

// Validate needs an identity. No pins is valid: it accepts nobody (an
// emptied pins file revokes everyone).
func (a *Authenticator) Validate() error {
	if a.Identity == nil {
		return errors.New("no identity: configure a pinned identity or CA certificates")
	}
	return nil
}

// PeerName is the configured name of an accepted pin, else the pin's text form.
func (a *Authenticator) PeerName(p Pin) string {
	if n, ok := a.Names[p]; ok {
		return n
	}
	return p.String()
}

func (a *Authenticator) LocalCertificate() tls.Certificate { return a.Identity.Certificate }

func (*Authenticator) ConfigureClient(c *tls.Config, _ *auth.Policy, _ string) {
	// The pin, checked in VerifyConnection, replaces chain validation.
	c.InsecureSkipVerify = true
	c.ServerName = "pqtunnel"
}

func (*Authenticator) Chains([]*x509.Certificate, x509.ExtKeyUsage, *auth.Policy) ([][]*x509.Certificate, error) {
	return nil, nil
}

func (a *Authenticator) Accept(certs []*x509.Certificate, _ [][]*x509.Certificate, p *auth.Policy) (string, error) {
	leaf := certs[0]
	pin, err := PinOf(leaf)
	if err != nil {
		return "", fmt.Errorf("%w: %w", auth.ErrPeerNotAllowed, err)
	}
	if !slices.Contains(a.Peers, pin) {
		return "", fmt.Errorf("%w: pin %s is not in %s", auth.ErrPeerNotAllowed, pin, p.NameOf(auth.SettingPeers))
	}
	if p.RequireMLDSA87 {
		if ok, why := auth.ChainMLDSA87([]*x509.Certificate{leaf}); !ok {
			return "", p.RefuseBy(auth.ErrNotCNSA2, auth.SettingProfile, "ML-DSA-87", why+" (the peer needs an identity from 'pqtunnel keygen --profile cnsa2')")
		}
	}
	return a.PeerName(pin), nil
}

func (a *Authenticator) ProofKey() ed25519.PrivateKey { return a.Identity.Ed25519 }

func (*Authenticator) PeerProves() bool { return true }

// PQAuth is always true: PinOf accepts only ML-DSA-65 and ML-DSA-87 keys.
func (*Authenticator) PQAuth([][]*x509.Certificate) (bool, string) { return true, "" }

// Secret is both keys of the identity; none without one.
func (a *Authenticator) Secret() ([]byte, error) {
	if a.Identity == nil {
		return nil, nil
	}
	return append(a.Identity.Ed25519.Seed(), a.Identity.MLDSA.Bytes()...), nil
}

// Name is this side's pin.
func (a *Authenticator) Name() string { return a.Identity.Pin.String() }

// Defines reports whether name is a pin's name or text form.
func (a *Authenticator) Defines(name string) bool {
	for _, p := range a.Peers {
		if a.PeerName(p) == name {
			return true
		}
	}
	return false
}

// AcceptsSeveral is true for more than one pin.
func (a *Authenticator) AcceptsSeveral() bool { return len(a.Peers) > 1 }

// PeerSet is the pins; an empty list accepts nobody.
func (a *Authenticator) PeerSet() auth.PeerSet {
	return auth.PeerSet{Setting: auth.SettingPeers, Listed: len(a.Peers), Nobody: len(a.Peers) == 0}
}

// PeerExpiry is never: a pin does not expire, and the identity
// certificate's dates are not relied on.
func (*Authenticator) PeerExpiry([]*x509.Certificate) (time.Time, bool) { return time.Time{}, false }

// CheckMLDSA87 refuses an identity whose key is not ML-DSA-87.
func (a *Authenticator) CheckMLDSA87() error {
	if p := a.Identity.MLDSA.PublicKey().Parameters(); p != mldsa.MLDSA87() {
		return &auth.ProfileError{Setting: auth.SettingIdentity, Have: "the identity's key is " + p.String(), Need: "ML-DSA-87", Fix: "make one with 'pqtunnel keygen --profile cnsa2 -o FILE'"}
	}
	return nil
}

// Advice speaks of identities and pins.
func (a *Authenticator) Advice(name func(auth.Setting) string) auth.Advice {
	return auth.Advice{
		Credential: "identity",
		Accept:     "add its pin to " + name(auth.SettingPeers),
		Rejected:   "identity: add our pin " + a.Name() + " to the peer's " + name(auth.SettingPeers),
	}
}

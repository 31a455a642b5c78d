// Package auth is the seam between pqtunnel's TLS policy and its
// authentication modes. An Authenticator says what this side presents in
// the handshake and how it verifies, accepts and names its peer; one
// package per mode implements it (auth/pinned: hybrid identities accepted
// by their pins; auth/camode: certificates a CA signed, accepted by allow
// rules). hybridtls runs the key-exchange policy and the session proof
// around an Authenticator without knowing which mode it is, and the
// program's configuration (internal/config) picks the mode.
//
// The package also holds what the modes share: the refusals they return,
// the checks of ML-DSA chains and of the files that hold keys and trust
// material. It imports no other pqtunnel package.
package auth

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"
)

// Authenticator is one authentication mode with its material: immutable
// once handed to a store; a reload builds a new one. Methods that take a
// Policy apply the process's fixed policy to the material.
type Authenticator interface {
	// Validate reports whether the material is complete enough to
	// authenticate; a store refuses one that is not, keeping the old.
	Validate() error
	// LocalCertificate is what this side presents in every handshake.
	LocalCertificate() tls.Certificate
	// ConfigureClient sets in c how a client has crypto/tls check the
	// server's chain, before VerifyConnection runs; host is the name dialled.
	ConfigureClient(c *tls.Config, p *Policy, host string)
	// Chains verifies the peer's certificates for usage and returns the
	// verified chains; a mode without chains returns none and no error.
	Chains(certs []*x509.Certificate, usage x509.ExtKeyUsage, p *Policy) ([][]*x509.Certificate, error)
	// Accept applies this side's rules to a peer whose chains verified
	// and whose certificates are not empty, and returns the peer's name
	// from this side's configuration, never from the peer. A refusal
	// wraps ErrPeerNotAllowed (or a RefusalError of the mode's own).
	Accept(certs []*x509.Certificate, chains [][]*x509.Certificate, p *Policy) (string, error)
	// ProofKey signs this side's session proof; nil sends an empty one.
	ProofKey() ed25519.PrivateKey
	// PeerProves reports whether the peer must sign its session proof
	// with the key its certificate carries (see Ed25519PublicKey).
	PeerProves() bool
	// PQAuth reports whether an accepted peer authenticated with ML-DSA
	// throughout, and when not, which certificate is classical.
	PQAuth(chains [][]*x509.Certificate) (bool, string)
	// Secret is this side's private key material, from which DeriveKey
	// derives its keys; nil when none is configured.
	Secret() ([]byte, error)
	// Name is how this side presents itself in logs and advice: its pin,
	// or its certificate's common name.
	Name() string
	// Defines reports whether name is a peer name this material
	// configures. Only such names may appear in route allow lists and
	// metric labels, since they never come from the peer.
	Defines(name string) bool
	// AcceptsSeveral reports whether more than one peer may authenticate,
	// so that a route without an allow list is open to several.
	AcceptsSeveral() bool
	// PeerSet describes the set of peers this side accepts, for start-up
	// and reload messages.
	PeerSet() PeerSet
	// PeerExpiry is when the certificates a peer presented (certs, leaf
	// first) stop being valid, the earliest of them; ok is false when the
	// mode does not rely on their dates, so a tunnel never expires.
	PeerExpiry(certs []*x509.Certificate) (notAfter time.Time, ok bool)
	// CheckMLDSA87 refuses, with a *ProfileError, what this side presents
	// when it is not ML-DSA-87 throughout (the CNSA 2.0 profile).
	CheckMLDSA87() error
	// Advice is what diagnostics tell a person whose handshake this mode
	// refused, or the peer refused, naming settings through name.
	Advice(name func(Setting) string) Advice
}

// Policy is the part of the process's fixed TLS policy that authenticators
// apply; the zero value requires nothing beyond the mode's own rules.
type Policy struct {
	// ServerName is the name a client verifies in CA mode; empty verifies
	// the host dialled.
	ServerName string
	// RequirePQAuth refuses a CA-mode peer whose certificate chain is not
	// ML-DSA end to end (PQT_AUTH=pq). Pinned identities always are.
	RequirePQAuth bool
	// RequireMLDSA87 refuses a peer that authenticates with anything but
	// ML-DSA-87: its identity key, or in CA mode every key and signature of
	// its chain (PQT_PROFILE=cnsa2).
	RequireMLDSA87 bool
	// SettingName, if set, names a Setting in refusal messages in the
	// caller's own terms (pqtunnel gives its variable names), so that a
	// refusal says what to change; nil uses Setting.String.
	SettingName func(Setting) string
}

// NameOf is how messages name s: by SettingName, else s.String().
func (p *Policy) NameOf(s Setting) string {
	if p.SettingName != nil {
		return p.SettingName(s)
	}
	return s.String()
}

// Setting is a part of the authentication configuration that a refusal
// or a piece of advice can blame.
type Setting int

const (
	SettingCAs      Setting = iota // camode.Authenticator.CAs
	SettingPeers                   // pinned.Authenticator.Peers
	SettingAllow                   // camode.Authenticator.Allow
	SettingPQAuth                  // Policy.RequirePQAuth, as set
	SettingProfile                 // Policy.RequireMLDSA87, as set
	SettingIdentity                // pinned.Authenticator.Identity
	SettingCert                    // camode.Authenticator.Certificate
)

// String is the Go field name, the Setting's name when Policy.SettingName is nil.
func (s Setting) String() string {
	switch s {
	case SettingCAs:
		return "CAs"
	case SettingPeers:
		return "Peers"
	case SettingAllow:
		return "Allow"
	case SettingPQAuth:
		return "RequirePQAuth"
	case SettingProfile:
		return "RequireMLDSA87"
	case SettingIdentity:
		return "Identity"
	case SettingCert:
		return "Certificate"
	}
	return fmt.Sprintf("Setting(%d)", int(s))
}

// PeerSet describes whom an Authenticator accepts.
type PeerSet struct {
	// Setting is the setting that lists them (SettingPeers, SettingAllow).
	Setting Setting
	// Listed is how many entries it lists: pins, or allow rules.
	Listed int
	// Nobody is true when every peer is refused: a list that came from a
	// file and is empty (an emptied file revokes everyone).
	Nobody bool
}

// Advice is the words diagnostics use about a refused handshake, which
// depend on what the mode authenticates with.
type Advice struct {
	// Credential is what this side refused of the peer: "identity", "certificate".
	Credential string
	// Accept says how to accept a refused peer that is the right one:
	// "add its pin to PQT_PEERS".
	Accept string
	// Rejected says what the peer refused of this side and how to have it
	// accepted: "identity: add our pin … to the peer's PQT_PEERS".
	Rejected string
}

// ProfileError refuses this side's own material under a profile it does
// not meet, saying what the material is, what the profile needs and how
// to get it.
type ProfileError struct {
	Setting Setting // the setting holding the material
	Have    string  // "the identity's key is ML-DSA-65"
	Need    string  // "ML-DSA-87"
	Fix     string  // "make one with 'pqtunnel keygen --profile cnsa2 -o FILE'"
}

func (e *ProfileError) Error() string {
	return fmt.Sprintf("%s: %s; the profile needs %s (%s)", e.Setting, e.Have, e.Need, e.Fix)
}

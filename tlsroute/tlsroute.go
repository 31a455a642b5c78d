// Package tlsroute is pqtunnel's one-sided TLS: routes whose other end is
// not pqtunnel but any standard TLS 1.3 client or server. A Terminator
// accepts TLS from browsers, curl or OpenSSL on a forward route; an
// Originator dials TLS to a standard server for a target route. Both keep
// the tunnels' key-exchange policy (hybridtls.Policy: strict or prefer and
// the group list) and report, per connection, the group, the signature
// scheme, the server name and the application protocol.
//
// It runs no accept loops and owns no listeners: the engine (package proxy)
// hands it one connection at a time. It does not authenticate with pins or
// the session proof of tunnels: the far end speaks only standard TLS.
package tlsroute

import (
	"crypto/mldsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/auth/camode"
	"github.com/pqtunnel/pqtunnel/hybridtls"
)

// Material is what a reload replaces: the certificates a Terminator serves,
// the CAs and names it accepts client certificates from, and the roots an
// Originator verifies servers against.
type Material struct {
	// Certificates are served by Terminators, each with its Leaf parsed. The
	// first one whose key the client's signature algorithms allow and whose
	// names cover the client's server name (SNI) is chosen, ML-DSA ones
	// before classical ones; with no match, the first. Empty when no route
	// terminates TLS.
	Certificates []tls.Certificate
	// ClientCAs, if set, makes Terminators require a client certificate
	// that chains to one of them.
	ClientCAs *x509.CertPool
	// ClientAllow, if set, accepts only client certificates one of these
	// rules matches; empty accepts any that ClientCAs signed.
	ClientAllow []camode.AllowRule
	// RootCAs are the roots an Originator verifies servers against; nil
	// means the system's.
	RootCAs *x509.CertPool
}

// Validate checks that every certificate has its parsed leaf, and that
// allow rules come with the CAs they restrict.
func (m *Material) Validate() error {
	for i, c := range m.Certificates {
		if c.Leaf == nil {
			return fmt.Errorf("certificate %d has no parsed leaf", i+1)
		}
	}
	if len(m.ClientAllow) > 0 && m.ClientCAs == nil {
		return errors.New("client allow rules without client CAs")
	}
	return nil
}

// ordered returns the certificates with ML-DSA ones first, each group in
// its given order, so that a client that can verify ML-DSA gets it and
// any other falls through to a classical one.
func ordered(certs []tls.Certificate) []tls.Certificate {
	out := slices.Clone(certs)
	slices.SortStableFunc(out, func(a, b tls.Certificate) int {
		return boolRank(isMLDSA(b.Leaf)) - boolRank(isMLDSA(a.Leaf))
	})
	return out
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

func isMLDSA(c *x509.Certificate) bool {
	_, ok := c.PublicKey.(*mldsa.PublicKey)
	return ok
}

// Store holds the Material in force and the fixed policy; Swap replaces
// the material for new connections only.
type Store struct {
	policy   hybridtls.Policy
	log      *slog.Logger
	material atomic.Pointer[Material]
}

// NewStore validates m and returns a Store serving it. Only the policy's
// Mode and Groups are used. A nil logger discards.
func NewStore(p hybridtls.Policy, m *Material, log *slog.Logger) (*Store, error) {
	if len(p.Groups) == 0 {
		return nil, errors.New("tlsroute: no key-exchange groups configured")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{policy: p, log: log}
	if err := s.Swap(m); err != nil {
		return nil, err
	}
	return s, nil
}

// Swap replaces the material after validating it; on error the old stays.
func (s *Store) Swap(m *Material) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("tlsroute: %w", err)
	}
	c := *m
	c.Certificates = ordered(m.Certificates)
	s.material.Store(&c)
	return nil
}

// Material returns the material in force.
func (s *Store) Material() *Material { return s.material.Load() }

// Policy returns the fixed key-exchange policy.
func (s *Store) Policy() hybridtls.Policy { return s.policy }

// sigName is the scheme a certificate's key signs the handshake with, for
// logs: RSA keys have several (PSS with SHA-256 to SHA-512), named together.
func sigName(c *x509.Certificate) string {
	if s := auth.SignatureScheme(c); s != 0 {
		return auth.SignatureSchemeName(s)
	}
	if _, ok := c.PublicKey.(*rsa.PublicKey); ok {
		return "RSA-PSS"
	}
	return "unknown"
}

// Describe names a certificate for logs: its first name and key's scheme,
// "web.example.com (ECDSA-P256-SHA256)".
func Describe(c *x509.Certificate) string {
	return auth.CertName(c) + " (" + sigName(c) + ")"
}

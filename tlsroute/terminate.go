package tlsroute

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/hybridtls"
)

// Terminator accepts TLS 1.3 from standard clients for one forward route.
// Session tickets are on (browsers reconnect often); a resumed session
// always runs a fresh key exchange under the same group policy, since
// crypto/tls resumes only with psk_dhe_ke, and its client certificate is
// checked again against the material in force.
type Terminator struct {
	store *Store
	alpn  []string
	// outer is the configuration every connection starts with: it owns the
	// session ticket keys (rotated by crypto/tls) and asks inner for the rest.
	outer *tls.Config
	inner atomic.Pointer[innerConfig]
}

// innerConfig is the per-client configuration built for one Material, so
// that a reload takes effect at the next ClientHello.
type innerConfig struct {
	m   *Material
	cfg *tls.Config
}

// NewTerminator returns a Terminator serving the store's certificates with
// the application protocols alpn (none when empty).
func NewTerminator(s *Store, alpn []string) *Terminator {
	t := &Terminator{store: s, alpn: slices.Clone(alpn)}
	t.outer = &tls.Config{MinVersion: tls.VersionTLS13, GetConfigForClient: t.configForClient}
	return t
}

// hello is what the ClientHello offered and what this side chose, noted by
// the callbacks for the connection's report.
type hello struct {
	offered []tls.CurveID
	sig     string
}

// noteConn carries a connection's hello record into crypto/tls's
// callbacks, which see the conn passed to tls.Server as ClientHelloInfo.Conn.
type noteConn struct {
	net.Conn
	h *hello
}

func noteOf(c net.Conn) *hello {
	if nc, ok := c.(*noteConn); ok {
		return nc.h
	}
	return &hello{} // not one of ours: nothing to report to
}

func (t *Terminator) configForClient(chi *tls.ClientHelloInfo) (*tls.Config, error) {
	noteOf(chi.Conn).offered = slices.Clone(chi.SupportedCurves)
	m := t.store.material.Load()
	if ic := t.inner.Load(); ic != nil && ic.m == m {
		return ic.cfg, nil
	}
	ic := &innerConfig{m: m, cfg: t.build(m)}
	t.inner.Store(ic)
	return ic.cfg, nil
}

// build is the configuration for clients while m is in force. It has no
// ticket keys of its own, so the outer configuration's are used and
// tickets stay valid across reloads.
func (t *Terminator) build(m *Material) *tls.Config {
	policy := t.store.policy
	c := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: policy.Curves(),
		NextProtos:       t.alpn,
		GetCertificate: func(chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, err := choose(m.Certificates, chi)
			if err == nil {
				noteOf(chi.Conn).sig = sigName(cert.Leaf)
			}
			return cert, err
		},
	}
	if m.ClientCAs != nil {
		c.ClientCAs = m.ClientCAs
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := hybridtls.CheckGroup(cs.CurveID, policy.Mode, policy.Curves()); err != nil {
			return err
		}
		if m.ClientCAs == nil {
			return nil
		}
		return t.checkClient(m, cs)
	}
	return c
}

// choose picks the first certificate the client can verify and whose names
// cover its server name, else the first that it can verify, else the first.
func choose(certs []tls.Certificate, chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if len(certs) == 0 {
		return nil, errors.New("tlsroute: no certificate configured")
	}
	for i := range certs {
		if chi.SupportsCertificate(&certs[i]) == nil {
			return &certs[i], nil
		}
	}
	// No name matched: serve a key the client can verify, so that it gets
	// a certificate error it can explain rather than a handshake failure.
	sni := *chi
	sni.ServerName = ""
	for i := range certs {
		if sni.SupportsCertificate(&certs[i]) == nil {
			return &certs[i], nil
		}
	}
	return &certs[0], nil
}

// checkClient verifies a client certificate against the material in force,
// also on resumption (when crypto/tls checks only its dates), and applies
// the allow rules.
func (t *Terminator) checkClient(m *Material, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: no client certificate", errNotAllowed)
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.ClientCAs, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	if len(m.ClientAllow) == 0 {
		return nil
	}
	for _, r := range m.ClientAllow {
		if r.Match(leaf) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s matches no allow rule", errNotAllowed, auth.CertName(leaf))
}

var errNotAllowed = errors.New("client certificate not allowed")

// Handshake runs the server handshake on raw within ctx and returns the
// TLS connection with what it negotiated. A refusal, by policy or by
// failure, is a *HandshakeError; the client has been sent an alert.
func (t *Terminator) Handshake(ctx context.Context, raw net.Conn) (*tls.Conn, Info, error) {
	h := &hello{}
	start := time.Now()
	tc := tls.Server(&noteConn{Conn: raw, h: h}, t.outer)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, Info{}, &HandshakeError{Reason: t.reason(err, h), Offered: h.offered, Err: err}
	}
	cs := tc.ConnectionState()
	info := Info{Group: cs.CurveID, Sig: h.sig, SNI: cs.ServerName, ALPN: cs.NegotiatedProtocol, Resumed: cs.DidResume, Handshake: time.Since(start)}
	if cs.DidResume {
		info.Sig = "resumed"
	}
	if len(cs.PeerCertificates) > 0 {
		info.Client = auth.CertName(cs.PeerCertificates[0])
	}
	return tc, info, nil
}

// reason classifies a failed server handshake from what the client
// offered and the error's type.
func (t *Terminator) reason(err error, h *hello) string {
	policy := t.store.policy
	ours := policy.Curves()
	common := slices.ContainsFunc(h.offered, func(g tls.CurveID) bool { return slices.Contains(ours, g) })
	switch {
	case h.offered != nil && !common && !slices.ContainsFunc(h.offered, hybridtls.IsPostQuantum):
		return ReasonNotPostQuantum
	case h.offered != nil && !common:
		return ReasonNoCommonGroup
	case errors.Is(err, hybridtls.ErrNotPostQuantum):
		return ReasonNotPostQuantum
	case errors.Is(err, errNotAllowed):
		return ReasonNotAllowed
	case isCertError(err):
		return ReasonBadCertificate
	case isTimeout(err):
		return ReasonTimeout
	}
	return ReasonTLS
}

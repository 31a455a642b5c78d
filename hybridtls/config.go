package hybridtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"

	"github.com/pqtunnel/pqtunnel/auth"
)

// Policy is the key-exchange and naming policy, fixed for the process.
type Policy struct {
	Mode   PQMode
	Groups []tls.CurveID
	// Auth is what the authenticators apply: the name a client verifies in
	// CA mode, ML-DSA requirements and the names of their settings.
	Auth auth.Policy
	// ALPN is the application protocol both sides must agree on.
	ALPN string
	// RetiredALPNs are older protocol versions a client offers after ALPN
	// only to recognise a server that selects one, and refuse it before
	// sending its certificate with a *VersionError naming both versions.
	// Nil offers ALPN alone.
	RetiredALPNs []string
	// Logger receives refusals that happen inside the TLS stack, where no
	// caller sees the error (QUIC handshakes rejected by the server).
	Logger *slog.Logger
	// OnRefused, if set, is told the reason of each refusal that Logger
	// receives, for metrics.
	OnRefused func(reason string)
	// KeyLog, if set, receives every connection's TLS secrets in the NSS
	// key log format (PQT_KEYLOG). WARNING: whoever reads it can decrypt
	// the tunnel traffic; it is for debugging and for showing what a
	// handshake carries.
	KeyLog io.Writer
	// SettingName, if set, names a Setting in refusal messages in the
	// caller's own terms (pqtunnel gives its variable names), so that a
	// refusal says what to change; nil uses Setting.String. Auth has its
	// own for the authenticators' settings.
	SettingName func(Setting) string
}

// Setting is a part of the key-exchange Policy that a refusal can blame.
type Setting int

const (
	SettingGroups Setting = iota // Policy.Groups
	SettingMode                  // Policy.Mode
)

// String is the Go field name, the Setting's name when Policy.SettingName is nil.
func (s Setting) String() string {
	switch s {
	case SettingGroups:
		return "Groups"
	case SettingMode:
		return "Mode"
	}
	return fmt.Sprintf("Setting(%d)", int(s))
}

// NameOf is how messages name s: by Policy.SettingName, else s.String().
func (p *Policy) NameOf(s Setting) string { return p.name(s) }

func (p *Policy) name(s Setting) string {
	if p.SettingName != nil {
		return p.SettingName(s)
	}
	return s.String()
}

// Curves is the list offered and accepted: in prefer mode X25519 is added
// last so a classical-only peer can still connect.
func (p *Policy) Curves() []tls.CurveID {
	cs := slices.Clone(p.Groups)
	if p.Mode == Prefer && !slices.Contains(cs, tls.X25519) {
		cs = append(cs, tls.X25519)
	}
	return cs
}

// Store holds the current Authenticator and hands out TLS configurations
// that read it, so a reload takes effect for new connections only. It runs
// the key-exchange policy and the session proof around the Authenticator
// and never asks which mode it is.
type Store struct {
	policy Policy
	auth   atomic.Pointer[authenticator]
}

// authenticator boxes an auth.Authenticator for atomic.Pointer.
type authenticator struct{ auth.Authenticator }

// NewStore validates a and returns a Store serving it.
func NewStore(p Policy, a auth.Authenticator) (*Store, error) {
	if len(p.Groups) == 0 {
		return nil, errors.New("no key-exchange groups configured")
	}
	if p.Logger == nil {
		p.Logger = slog.New(slog.DiscardHandler)
	}
	if p.OnRefused == nil {
		p.OnRefused = func(string) {}
	}
	s := &Store{policy: p}
	if err := s.Swap(a); err != nil {
		return nil, err
	}
	return s, nil
}

// Swap replaces the authenticator after validating it; on error the old
// one stays.
func (s *Store) Swap(a auth.Authenticator) error {
	if a == nil {
		return errors.New("no identity: configure a pinned identity or CA certificates")
	}
	if err := a.Validate(); err != nil {
		return err
	}
	s.auth.Store(&authenticator{a})
	return nil
}

// Authenticator returns the authenticator in force.
func (s *Store) Authenticator() auth.Authenticator { return s.auth.Load().Authenticator }

// Policy returns the fixed policy.
func (s *Store) Policy() Policy { return s.policy }

func (s *Store) baseConfig(a auth.Authenticator) *tls.Config {
	c := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		MaxVersion:       tls.VersionTLS13,
		CurvePreferences: s.policy.Curves(),
		NextProtos:       []string{s.policy.ALPN},
		// Resumption would skip the certificate exchange; tunnels are
		// long-lived, so every connection does a full handshake instead.
		SessionTicketsDisabled: true,
		KeyLogWriter:           s.policy.KeyLog,
	}
	c.Certificates = []tls.Certificate{a.LocalCertificate()}
	return c
}

// ServerConfig returns the TLS configuration for accepting tunnel
// connections. The reason of each refusal inside the TLS stack goes to
// Policy.OnRefused and to each of onRefused: the policy is fixed for the
// process, while each user of the Store (an engine and its metrics) adds its own.
func (s *Store) ServerConfig(onRefused ...func(reason string)) *tls.Config {
	refused := func(reason string) {
		s.policy.OnRefused(reason)
		for _, f := range onRefused {
			f(reason)
		}
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{s.policy.ALPN},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			a := s.Authenticator()
			// crypto/tls refuses a hello with no common group itself, with
			// the proper alert; this only says why, in words, with both lists.
			if err := s.checkOffered(hello); err != nil {
				s.policy.Logger.Warn("tunnel handshake refused", "remote", helloRemote(hello), "reason", reasonOf(err), "err", err)
				refused(reasonOf(err))
			}
			c := s.baseConfig(a)
			// Pins and, in CA mode, the chain are checked in
			// VerifyConnection rather than by crypto/tls, so that every
			// refusal is logged and counted with its reason, on QUIC too,
			// where quic-go swallows handshake errors.
			c.ClientAuth = tls.RequireAnyClientCert
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				err := s.verifyPeer(a, &cs, true)
				if err != nil {
					s.policy.Logger.Warn("tunnel handshake refused", "remote", helloRemote(hello), "reason", reasonOf(err), "err", err)
					refused(reasonOf(err))
				}
				return err
			}
			return c, nil
		},
	}
}

// ClientConfig returns the TLS configuration for dialling a tunnel peer
// whose name is Policy.Auth.ServerName.
func (s *Store) ClientConfig() *tls.Config { return s.ClientConfigFor("") }

// ClientConfigFor is ClientConfig for a peer at host: in CA mode the
// certificate must name Policy.Auth.ServerName, or host when that is empty.
func (s *Store) ClientConfigFor(host string) *tls.Config {
	a := s.Authenticator()
	c := s.baseConfig(a)
	a.ConfigureClient(c, &s.policy.Auth, host)
	c.NextProtos = append([]string{s.policy.ALPN}, s.policy.RetiredALPNs...)
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		// A client checks the server before it sends its own certificate.
		if slices.Contains(s.policy.RetiredALPNs, cs.NegotiatedProtocol) {
			return &VersionError{Ours: s.policy.ALPN, Theirs: cs.NegotiatedProtocol}
		}
		return s.verifyPeer(a, &cs, false)
	}
	return c
}

// VersionError refuses a peer that speaks an older pqtunnel protocol
// version; both are named so that the log says which side to upgrade.
type VersionError struct{ Ours, Theirs string }

func (e *VersionError) Error() string {
	return "the peer speaks " + e.Theirs + ", this side " + e.Ours + ": run the same release on both sides"
}

// HandshakeReason classifies it for logs and metrics.
func (e *VersionError) HandshakeReason() string { return "version_mismatch" }

// checkOffered refuses a ClientHello that shares no group with the policy,
// with an error that names both lists.
func (s *Store) checkOffered(hello *tls.ClientHelloInfo) error {
	ours := s.policy.Curves()
	for _, g := range hello.SupportedCurves {
		if slices.Contains(ours, g) {
			return nil
		}
	}
	if slices.ContainsFunc(hello.SupportedCurves, IsPostQuantum) {
		return fmt.Errorf("%w: peer offered %s, %s accepts %s", ErrNoCommonGroup, GroupNames(hello.SupportedCurves), s.policy.name(SettingGroups), GroupNames(ours))
	}
	return fmt.Errorf("%w: peer offered only %s, %s=%s accepts %s", ErrNotPostQuantum, GroupNames(hello.SupportedCurves), s.policy.name(SettingMode), s.policy.Mode, GroupNames(ours))
}

// ErrNoCommonGroup is wrapped when both sides are post-quantum but their
// group lists share none.
var ErrNoCommonGroup error = auth.NewRefusal("no_common_group", "no common key-exchange group")

// LoggedRefusal reports whether a server-side handshake failure of this
// reason is one a Store logs and counts itself (group or peer policy), so
// that whoever sees the failure next does not log it again.
func LoggedRefusal(reason string) bool {
	return reason == "not_post_quantum" || reason == "no_common_group" || reason == "peer_not_allowed" || reason == "bad_certificate"
}

func (s *Store) verifyPeer(a auth.Authenticator, cs *tls.ConnectionState, server bool) error {
	if err := checkGroup(cs.CurveID, s.policy.Mode, s.policy.Curves(), s.policy.name); err != nil {
		return err
	}
	chains, err := s.peerChains(a, cs, server)
	if err != nil {
		return err
	}
	_, err = s.accept(a, cs.PeerCertificates, chains)
	return err
}

// Recheck tells whether the peer of an established connection is still
// accepted by the authenticator in force now (after a reload), and by which
// name; role is this side's role in that connection. The chain is verified
// again, against the current CAs and clock.
func (s *Store) Recheck(cs *tls.ConnectionState, role Role) (string, error) {
	a := s.Authenticator()
	usage := x509.ExtKeyUsageServerAuth
	if role == RoleServer {
		usage = x509.ExtKeyUsageClientAuth
	}
	chains, err := a.Chains(cs.PeerCertificates, usage, &s.policy.Auth)
	if err != nil {
		return "", err
	}
	return s.accept(a, cs.PeerCertificates, chains)
}

// accept applies the mode's rules to a peer whose chains (if the mode has
// any) are verified, and returns the peer's name.
func (s *Store) accept(a auth.Authenticator, certs []*x509.Certificate, chains [][]*x509.Certificate) (string, error) {
	if len(certs) == 0 {
		return "", fmt.Errorf("%w: peer presented no certificate", auth.ErrPeerNotAllowed)
	}
	return a.Accept(certs, chains, &s.policy.Auth)
}

// peerChains returns the peer's verified chains. A client has them from
// crypto/tls (none in pinned mode); a server verifies the chain itself
// (see ServerConfig), for client use.
func (s *Store) peerChains(a auth.Authenticator, cs *tls.ConnectionState, server bool) ([][]*x509.Certificate, error) {
	if !server {
		return cs.VerifiedChains, nil
	}
	return a.Chains(cs.PeerCertificates, x509.ExtKeyUsageClientAuth, &s.policy.Auth)
}

// Peer describes an authenticated peer.
type Peer struct {
	// Name comes from this side's configuration, never from the peer: the
	// pin's name (or the pin) in pinned mode; in CA mode the name of the
	// first named PQT_ALLOW rule it matches, else the certificate's name.
	Name string
	// PQAuth is true when the peer authenticated with ML-DSA: its
	// CertificateVerify and, in CA mode, every signature up to the root.
	PQAuth bool
	// Sig is the signature scheme of the peer's CertificateVerify, which
	// TLS 1.3 ties to the peer certificate's key.
	Sig tls.SignatureScheme
	// ClassicalReason says, when PQAuth is false, which certificate of the
	// peer's chain is classical.
	ClassicalReason string
}

// Authenticate runs the post-handshake step on an established TLS session:
// it checks the negotiated group again, sends this side's Ed25519 proof over
// rw, and reads and verifies the peer's. The caller bounds it with a deadline.
func (s *Store) Authenticate(cs *tls.ConnectionState, rw io.ReadWriter, role Role) (Peer, error) {
	a := s.Authenticator()
	if cs.Version != tls.VersionTLS13 {
		return Peer{}, fmt.Errorf("negotiated TLS version %#x, want TLS 1.3", cs.Version)
	}
	if err := checkGroup(cs.CurveID, s.policy.Mode, s.policy.Curves(), s.policy.name); err != nil {
		return Peer{}, err
	}
	msg, err := AppendProof(nil, cs, a.ProofKey(), role)
	if err != nil {
		return Peer{}, err
	}
	if _, err := rw.Write(msg); err != nil {
		return Peer{}, fmt.Errorf("send proof: %w", err)
	}
	sig, err := ReadProof(rw)
	if err != nil {
		return Peer{}, err
	}
	if err := VerifyProof(cs, sig, !role, a.PeerProves()); err != nil {
		return Peer{}, err
	}
	leaf := cs.PeerCertificates[0]
	p := Peer{Sig: auth.SignatureScheme(leaf)}
	chains, err := s.peerChains(a, cs, role == RoleServer)
	if err != nil {
		return Peer{}, err
	}
	// The same authenticator VerifyConnection checked (a is loaded once
	// per connection), so this only names the peer.
	if p.Name, err = s.accept(a, cs.PeerCertificates, chains); err != nil {
		return Peer{}, err
	}
	p.PQAuth, p.ClassicalReason = a.PQAuth(chains)
	return p, nil
}

func helloRemote(h *tls.ClientHelloInfo) string {
	if h.Conn == nil || h.Conn.RemoteAddr() == nil {
		return ""
	}
	return h.Conn.RemoteAddr().String()
}

// reasonOf is the reason of one of the policy's own refusals, "tls" for
// any other failure.
func reasonOf(err error) string {
	if err == nil {
		return ""
	}
	if re, ok := errors.AsType[*auth.RefusalError](err); ok {
		return re.Reason
	}
	return "tls"
}

package hybridtls

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/mldsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"
)

// Material is everything one side needs to authenticate itself and its peer.
// It is immutable once handed to a Store; a reload builds a new one.
type Material struct {
	// Identity is this side's hybrid identity (pinned mode).
	Identity *Identity
	// Peers are the pins this side accepts (pinned mode); none accepts nobody.
	Peers []Pin
	// Names gives some of Peers a name from configuration (pinned mode); a
	// pin without one is named by its text form.
	Names map[Pin]string

	// Certificate, CAs and Allow configure CA-based mTLS instead of pins.
	Certificate *tls.Certificate
	CAs         *x509.CertPool
	Allow       []AllowRule
	// AllowListed makes an empty Allow accept nobody rather than every
	// certificate the CA signed: the rules came from a file (PQT_ALLOW
	// naming one), and an emptied file revokes everyone, as an emptied
	// pins file does.
	AllowListed bool
}

// Pinned reports whether the material uses pinned identities rather than a CA.
func (m *Material) Pinned() bool { return m.Identity != nil }

// Name is how this side presents itself: its pin, or in CA mode its
// certificate's common name.
func (m *Material) Name() string { return m.mode().name() }

// Validate checks that the material configures exactly one way to authenticate.
func (m *Material) Validate() error {
	switch {
	case m.Identity != nil && m.Certificate != nil:
		return errors.New("both a pinned identity and a CA certificate are configured; use one")
	case m.Identity != nil:
		// No pins is valid: it accepts nobody (an emptied pins file revokes everyone).
	case m.Certificate != nil:
		if m.CAs == nil {
			return errors.New("a CA certificate needs the CA that signs the peer's certificate")
		}
	default:
		return errors.New("no identity: configure a pinned identity or CA certificates")
	}
	return nil
}

// PeerName is the configured name of an accepted pin, else the pin's text form.
func (m *Material) PeerName(p Pin) string {
	if n, ok := m.Names[p]; ok {
		return n
	}
	return p.String()
}

// Defines reports whether name is a peer name this material configures: a
// pin's name or text form, or a named PQT_ALLOW rule. Only such names may
// appear in route allow lists and metric labels, since they never come
// from the peer.
func (m *Material) Defines(name string) bool { return m.mode().defines(name) }

// AcceptsSeveral reports whether more than one peer may authenticate: more
// than one pin, or in CA mode anything but a single rule for one exact name.
func (m *Material) AcceptsSeveral() bool { return m.mode().acceptsSeveral() }

// Policy is the key-exchange and naming policy, fixed for the process.
type Policy struct {
	Mode   PQMode
	Groups []tls.CurveID
	// ServerName is the name a client verifies in CA mode.
	ServerName string
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
	// RequirePQAuth refuses a CA-mode peer whose certificate chain is not
	// ML-DSA end to end (PQT_AUTH=pq). Pinned identities always are.
	RequirePQAuth bool
	// RequireMLDSA87 refuses a peer that authenticates with anything but
	// ML-DSA-87: its identity key, or in CA mode every key and signature of
	// its chain (PQT_PROFILE=cnsa2).
	RequireMLDSA87 bool
	// KeyLog, if set, receives every connection's TLS secrets in the NSS
	// key log format (PQT_KEYLOG). WARNING: whoever reads it can decrypt
	// the tunnel traffic; it is for debugging and for showing what a
	// handshake carries.
	KeyLog io.Writer
	// SettingName, if set, names a Setting in refusal messages in the
	// caller's own terms (pqtunnel gives its variable names), so that a
	// refusal says what to change; nil uses Setting.String.
	SettingName func(Setting) string
}

// Setting is a part of the Policy or Material that a refusal can blame.
type Setting int

const (
	SettingGroups  Setting = iota // Policy.Groups
	SettingMode                   // Policy.Mode
	SettingCAs                    // Material.CAs
	SettingPeers                  // Material.Peers
	SettingAllow                  // Material.Allow
	SettingPQAuth                 // Policy.RequirePQAuth, as set
	SettingProfile                // Policy.RequireMLDSA87, as set
)

// String is the Go field name, the Setting's name when Policy.SettingName is nil.
func (s Setting) String() string {
	switch s {
	case SettingGroups:
		return "Groups"
	case SettingMode:
		return "Mode"
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

// Store holds the current Material and hands out TLS configurations that
// read it, so a reload takes effect for new connections only.
type Store struct {
	policy   Policy
	material atomic.Pointer[Material]
}

// NewStore validates m and returns a Store serving it.
func NewStore(p Policy, m *Material) (*Store, error) {
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
	if err := s.Swap(m); err != nil {
		return nil, err
	}
	return s, nil
}

// Swap replaces the material after validating it; on error the old material stays.
func (s *Store) Swap(m *Material) error {
	if err := m.Validate(); err != nil {
		return err
	}
	s.material.Store(m)
	return nil
}

// Material returns the material in force.
func (s *Store) Material() *Material { return s.material.Load() }

// Policy returns the fixed policy.
func (s *Store) Policy() Policy { return s.policy }

func (s *Store) baseConfig(m *Material) *tls.Config {
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
	c.Certificates = []tls.Certificate{m.mode().certificate()}
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
			m := s.material.Load()
			// crypto/tls refuses a hello with no common group itself, with
			// the proper alert; this only says why, in words, with both lists.
			if err := s.checkOffered(hello); err != nil {
				s.policy.Logger.Warn("tunnel handshake refused", "remote", helloRemote(hello), "reason", reasonOf(err), "err", err)
				refused(reasonOf(err))
			}
			c := s.baseConfig(m)
			// Pins and, in CA mode, the chain are checked in
			// VerifyConnection rather than by crypto/tls, so that every
			// refusal is logged and counted with its reason, on QUIC too,
			// where quic-go swallows handshake errors.
			c.ClientAuth = tls.RequireAnyClientCert
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				err := s.verifyPeer(m, &cs, true)
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
// whose name is Policy.ServerName.
func (s *Store) ClientConfig() *tls.Config { return s.ClientConfigFor("") }

// ClientConfigFor is ClientConfig for a peer at host: in CA mode the
// certificate must name Policy.ServerName, or host when that is empty.
func (s *Store) ClientConfigFor(host string) *tls.Config {
	m := s.material.Load()
	c := s.baseConfig(m)
	m.mode().configureClient(c, &s.policy, host)
	c.NextProtos = append([]string{s.policy.ALPN}, s.policy.RetiredALPNs...)
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		// A client checks the server before it sends its own certificate.
		if slices.Contains(s.policy.RetiredALPNs, cs.NegotiatedProtocol) {
			return &VersionError{Ours: s.policy.ALPN, Theirs: cs.NegotiatedProtocol}
		}
		return s.verifyPeer(m, &cs, false)
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

// RefusalError is the type of the policy's refusals. Reason is the label
// logs and metrics use; transports read it through HandshakeReason, so that
// failures are classified by type, never by their text.
type RefusalError struct {
	Reason string
	msg    string
}

func (e *RefusalError) Error() string { return e.msg }

// HandshakeReason is the refusal's reason for the transport's HandshakeError.
func (e *RefusalError) HandshakeReason() string { return e.Reason }

// ErrBadCertificate is wrapped when a CA-mode peer certificate does not
// verify: expired, signed by another CA, or not for client use.
var ErrBadCertificate error = &RefusalError{"bad_certificate", "peer certificate does not verify"}

// ErrNoCommonGroup is wrapped when both sides are post-quantum but their
// group lists share none.
var ErrNoCommonGroup error = &RefusalError{"no_common_group", "no common key-exchange group"}

// LoggedRefusal reports whether a server-side handshake failure of this
// reason is one a Store logs and counts itself (group or peer policy), so
// that whoever sees the failure next does not log it again.
func LoggedRefusal(reason string) bool {
	return reason == "not_post_quantum" || reason == "no_common_group" || reason == "peer_not_allowed" || reason == "bad_certificate"
}

// ErrPeerNotAllowed is wrapped when a peer authenticated correctly but is not
// one this side accepts (pin not in Material.Peers, certificate outside Material.Allow).
var ErrPeerNotAllowed error = &RefusalError{"peer_not_allowed", "peer not allowed"}

func (s *Store) verifyPeer(m *Material, cs *tls.ConnectionState, server bool) error {
	if err := checkGroup(cs.CurveID, s.policy.Mode, s.policy.Curves(), s.policy.name); err != nil {
		return err
	}
	chains, err := s.peerChains(m, cs, server)
	if err != nil {
		return err
	}
	_, err = s.accept(m, cs.PeerCertificates, chains)
	return err
}

// Recheck tells whether the peer of an established connection is still
// accepted by the material in force now (after a reload), and by which
// name; role is this side's role in that connection. The chain is verified
// again, against the current CAs and clock.
func (s *Store) Recheck(cs *tls.ConnectionState, role Role) (string, error) {
	m := s.material.Load()
	usage := x509.ExtKeyUsageServerAuth
	if role == RoleServer {
		usage = x509.ExtKeyUsageClientAuth
	}
	chains, err := m.mode().chains(cs.PeerCertificates, usage, &s.policy)
	if err != nil {
		return "", err
	}
	return s.accept(m, cs.PeerCertificates, chains)
}

// accept applies the mode's rules to a peer whose chains (if the mode has
// any) are verified, and returns the peer's name.
func (s *Store) accept(m *Material, certs []*x509.Certificate, chains [][]*x509.Certificate) (string, error) {
	if len(certs) == 0 {
		return "", fmt.Errorf("%w: peer presented no certificate", ErrPeerNotAllowed)
	}
	return m.mode().accept(certs, chains, &s.policy)
}

// peerChains returns the peer's verified chains. A client has them from
// crypto/tls (none in pinned mode); a server verifies the chain itself
// (see ServerConfig), for client use.
func (s *Store) peerChains(m *Material, cs *tls.ConnectionState, server bool) ([][]*x509.Certificate, error) {
	if !server {
		return cs.VerifiedChains, nil
	}
	return m.mode().chains(cs.PeerCertificates, x509.ExtKeyUsageClientAuth, &s.policy)
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
	m := s.material.Load()
	if cs.Version != tls.VersionTLS13 {
		return Peer{}, fmt.Errorf("negotiated TLS version %#x, want TLS 1.3", cs.Version)
	}
	if err := checkGroup(cs.CurveID, s.policy.Mode, s.policy.Curves(), s.policy.name); err != nil {
		return Peer{}, err
	}
	md := m.mode()
	msg, err := AppendProof(nil, cs, md.proofKey(), role)
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
	if err := VerifyProof(cs, sig, !role, md.peerProves()); err != nil {
		return Peer{}, err
	}
	leaf := cs.PeerCertificates[0]
	p := Peer{Sig: SignatureScheme(leaf)}
	chains, err := s.peerChains(m, cs, role == RoleServer)
	if err != nil {
		return Peer{}, err
	}
	// The same material VerifyConnection checked (m is loaded once per
	// connection), so this only names the peer.
	if p.Name, err = s.accept(m, cs.PeerCertificates, chains); err != nil {
		return Peer{}, err
	}
	p.PQAuth, p.ClassicalReason = md.pqAuth(chains)
	return p, nil
}

// SignatureScheme is the TLS 1.3 CertificateVerify scheme a certificate's
// key allows: crypto/tls refuses any other from its holder. Zero for keys
// with several possible schemes (RSA).
func SignatureScheme(cert *x509.Certificate) tls.SignatureScheme {
	switch k := cert.PublicKey.(type) {
	case *mldsa.PublicKey:
		switch k.Parameters() {
		case mldsa.MLDSA44():
			return tls.MLDSA44
		case mldsa.MLDSA65():
			return tls.MLDSA65
		case mldsa.MLDSA87():
			return tls.MLDSA87
		}
	case ed25519.PublicKey:
		return tls.Ed25519
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return tls.ECDSAWithP256AndSHA256
		case elliptic.P384():
			return tls.ECDSAWithP384AndSHA384
		case elliptic.P521():
			return tls.ECDSAWithP521AndSHA512
		}
	}
	return 0
}

// SignatureSchemeName is the standard name of a scheme for logs:
// ML-DSA-65, Ed25519, ECDSA-P256-SHA256; "unknown" for zero.
func SignatureSchemeName(s tls.SignatureScheme) string {
	switch s {
	case tls.MLDSA44:
		return "ML-DSA-44"
	case tls.MLDSA65:
		return "ML-DSA-65"
	case tls.MLDSA87:
		return "ML-DSA-87"
	case tls.Ed25519:
		return "Ed25519"
	case tls.ECDSAWithP256AndSHA256:
		return "ECDSA-P256-SHA256"
	case tls.ECDSAWithP384AndSHA384:
		return "ECDSA-P384-SHA384"
	case tls.ECDSAWithP521AndSHA512:
		return "ECDSA-P521-SHA512"
	case 0:
		return "unknown"
	}
	return s.String()
}

func certName(c *x509.Certificate) string {
	switch {
	case len(c.URIs) > 0:
		return c.URIs[0].String()
	case len(c.DNSNames) > 0:
		return c.DNSNames[0]
	}
	return c.Subject.CommonName
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
	if re, ok := errors.AsType[*RefusalError](err); ok {
		return re.Reason
	}
	return "tls"
}

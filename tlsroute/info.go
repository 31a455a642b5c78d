package tlsroute

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/hybridtls"
)

// Info is what one TLS connection of a route negotiated.
type Info struct {
	// Group is the key-exchange group, also on a resumed connection: TLS
	// 1.3 resumption here always runs a fresh key exchange (psk_dhe_ke).
	Group tls.CurveID
	// Sig names the scheme the server's certificate signs the handshake
	// with (ML-DSA-65, ECDSA-P256-SHA256, RSA-PSS); "resumed" when a
	// session ticket stood in for the certificate.
	Sig string
	// SNI is the server name the client asked for; empty when it sent none.
	SNI string
	// ALPN is the negotiated application protocol; empty when none.
	ALPN    string
	Resumed bool
	// Client names a terminated connection's client certificate (its first
	// URI or DNS name, or its common name); empty without client auth.
	Client string
	// Handshake is how long the TLS handshake took.
	Handshake time.Duration
}

// PostQuantum reports whether the connection's key exchange has a
// post-quantum KEM.
func (i Info) PostQuantum() bool { return hybridtls.IsPostQuantum(i.Group) }

// Reasons a TLS route handshake fails, for logs and metric labels.
const (
	ReasonNotPostQuantum = "not_post_quantum" // the other end offered or accepted no post-quantum group
	ReasonNoCommonGroup  = "no_common_group"  // post-quantum on both ends, no group in common
	ReasonBadCertificate = "bad_certificate"  // a certificate did not verify
	ReasonNotAllowed     = "client_not_allowed"
	ReasonTimeout        = "timeout"
	ReasonTLS            = "tls" // anything else: not TLS, a protocol error, a reset
)

// HandshakeError is a failed TLS route handshake. Reason is one of the
// Reason constants; Offered lists the groups the client offered (terminate)
// or this side offered (originate); Err is crypto/tls's error.
type HandshakeError struct {
	Reason  string
	Offered []tls.CurveID
	Err     error
}

func (e *HandshakeError) Error() string {
	s := "tls route handshake: " + e.Reason
	if len(e.Offered) > 0 {
		s += " (offered " + hybridtls.GroupNames(e.Offered) + ")"
	}
	return s + ": " + e.Err.Error()
}

func (e *HandshakeError) Unwrap() error { return e.Err }

// isTimeout reports a deadline that ended the handshake.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// isCertError reports a certificate that did not verify.
func isCertError(err error) bool {
	var ve *tls.CertificateVerificationError
	var ue x509.UnknownAuthorityError
	var he x509.HostnameError
	var ie x509.CertificateInvalidError
	return errors.As(err, &ve) || errors.As(err, &ue) || errors.As(err, &he) || errors.As(err, &ie)
}

// SNILabel bounds a client's server name for a metric label: the
// certificate name it matched ("*.example.com" for any name under a
// wildcard), "none" when the client sent none, "other" when no certificate
// of the material names it, so that clients cannot grow the series.
func (s *Store) SNILabel(sni string) string {
	if sni == "" {
		return "none"
	}
	for _, c := range s.material.Load().Certificates {
		for _, n := range c.Leaf.DNSNames {
			if strings.EqualFold(n, sni) {
				return strings.ToLower(n)
			}
			if suffix, ok := strings.CutPrefix(n, "*."); ok {
				if _, rest, ok := strings.Cut(sni, "."); ok && strings.EqualFold(rest, suffix) {
					return strings.ToLower(n)
				}
			}
		}
	}
	return "other"
}

package tlsroute

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"time"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/transport"
)

// Originator dials TLS 1.3 to a standard server for one target route,
// verifying the server's certificate for serverName against the material's
// roots, with the policy's key-exchange groups only.
type Originator struct {
	store      *Store
	serverName string
	alpn       []string
	// sessions lets reconnections to the same server resume; crypto/tls's
	// client offers psk_dhe_ke only, so each still runs a key exchange.
	sessions tls.ClientSessionCache
}

// NewOriginator returns an Originator for a server that must present a
// certificate for serverName (also sent as SNI), offering alpn (none when empty).
func NewOriginator(s *Store, serverName string, alpn []string) *Originator {
	return &Originator{store: s, serverName: serverName, alpn: slices.Clone(alpn), sessions: tls.NewLRUClientSessionCache(64)}
}

// ServerName is the name the server's certificate must carry.
func (o *Originator) ServerName() string { return o.serverName }

// Handshake runs the client handshake on raw within ctx. A refusal, by
// policy or by failure, is a *HandshakeError.
func (o *Originator) Handshake(ctx context.Context, raw net.Conn) (*tls.Conn, Info, error) {
	policy := o.store.policy
	m := o.store.material.Load()
	curves := policy.Curves()
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   curves,
		RootCAs:            m.RootCAs,
		ServerName:         o.serverName,
		NextProtos:         o.alpn,
		ClientSessionCache: o.sessions,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return hybridtls.CheckGroup(cs.CurveID, policy.Mode, curves)
		},
	}
	start := time.Now()
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, Info{}, &HandshakeError{Reason: o.reason(err), Offered: curves, Err: err}
	}
	cs := tc.ConnectionState()
	info := Info{Group: cs.CurveID, SNI: o.serverName, ALPN: cs.NegotiatedProtocol, Resumed: cs.DidResume, Handshake: time.Since(start), Sig: "resumed"}
	if len(cs.PeerCertificates) > 0 && !cs.DidResume {
		info.Sig = sigName(cs.PeerCertificates[0])
	}
	return tc, info, nil
}

// reason classifies a failed client handshake. A server that shares none
// of the offered groups answers with a handshake_failure alert: in strict
// mode all of them are post-quantum, so such a server is not (or lists
// only other post-quantum groups, which the log's offered list shows).
func (o *Originator) reason(err error) string {
	switch {
	case errors.Is(err, hybridtls.ErrNotPostQuantum):
		return ReasonNotPostQuantum
	case isCertError(err):
		return ReasonBadCertificate
	case transport.PeerRefusedGroups(err):
		if o.store.policy.Mode == hybridtls.Strict {
			return ReasonNotPostQuantum
		}
		return ReasonNoCommonGroup
	case isTimeout(err):
		return ReasonTimeout
	}
	return ReasonTLS
}

package check

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/auth/camode"
	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/transport"
)

// The advice names what this side authenticates with: a pin in pinned
// mode, a certificate and the peer's CA and allow rules in CA mode.
func TestDiagnoseNamesPinsOrCertificatesByMode(t *testing.T) {
	id, err := pinned.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	pinned := &pinned.Authenticator{Identity: id}
	ca := &camode.Authenticator{Certificate: &tls.Certificate{Leaf: &x509.Certificate{Subject: pkix.Name{CommonName: "web.internal"}}}}
	refused := &transport.HandshakeError{Reason: transport.ReasonRejectedByPeer, Err: errors.New("remote error: tls: bad certificate")}
	notOurs := fmt.Errorf("peer certificate: %w", auth.ErrPeerNotAllowed)
	for _, tc := range []struct {
		name       string
		err        error
		ours       auth.Authenticator
		want, deny string
	}{
		{"pinned, refused by the peer", refused, pinned, "add our pin " + id.Pin.String() + " to the peer's PQT_PEERS", "PQT_ALLOW"},
		{"CA mode, refused by the peer", refused, ca, "the peer refused our certificate web.internal: check that its PQT_CA signs our PQT_CERT and its PQT_ALLOW names us", "pin"},
		{"pinned, peer not ours", notOurs, pinned, "add its pin to PQT_PEERS", "PQT_ALLOW"},
		{"CA mode, peer not ours", notOurs, ca, "add a PQT_ALLOW rule for its certificate name", "pin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, v := Diagnose(tc.err, nil, nil, tc.ours, func(s string) string { return "PQT_" + strings.ToUpper(s) })
			if !strings.Contains(v, tc.want) || strings.Contains(v, tc.deny) {
				t.Errorf("advice %q: want %q in it and not %q", v, tc.want, tc.deny)
			}
		})
	}
}

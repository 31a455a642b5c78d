package hybridtls

import (
	"crypto/tls"
	"errors"
	"fmt"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/auth/camode"
	"github.com/pqtunnel/pqtunnel/transport"
)

// reason is how a transport classifies a handshake failure.
func reason(err error) string { return string(transport.Classify(err)) }

func TestReasonClassifiesFailures(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{fmt.Errorf("x: %w", ErrNotPostQuantum), "not_post_quantum"},
		{fmt.Errorf("x: %w", ErrNoCommonGroup), "no_common_group"},
		{fmt.Errorf("x: %w", camode.ErrBadCertificate), "bad_certificate"},
		{fmt.Errorf("x: %w", auth.ErrPeerNotAllowed), "peer_not_allowed"},
		{fmt.Errorf("%w: read proof: %w", ErrProof, transport.PeerAlert(42)), "rejected_by_peer"},
		{fmt.Errorf("x: %w", ErrProof), "proof_failed"},
		// The server's own refusal carries the handshake_failure alert it sent.
		{fmt.Errorf("%w%.0w", errors.New("tls: no key exchanges supported by both client and server"), tls.AlertError(40)), "no_common_group"},
		{errors.New("something else"), "tls"},
	}
	for _, c := range cases {
		if got := reason(c.err); got != c.want {
			t.Errorf("Classify(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	if !LoggedRefusal(reason(fmt.Errorf("x: %w", camode.ErrBadCertificate))) || LoggedRefusal(reason(fmt.Errorf("x: %w", ErrProof))) {
		t.Error("LoggedRefusal: bad_certificate is a logged refusal, a failed proof is not")
	}
}

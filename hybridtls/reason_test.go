package hybridtls

import (
	"errors"
	"fmt"
	"testing"
)

func TestReasonClassifiesFailures(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{fmt.Errorf("x: %w", ErrNotPostQuantum), "not_post_quantum"},
		{fmt.Errorf("x: %w", ErrNoCommonGroup), "no_common_group"},
		{fmt.Errorf("x: %w", ErrBadCertificate), "bad_certificate"},
		{fmt.Errorf("x: %w", ErrPeerNotAllowed), "peer_not_allowed"},
		{fmt.Errorf("%w: read proof: remote error: tls: bad certificate", ErrProof), "rejected_by_peer"},
		{fmt.Errorf("x: %w", ErrProof), "proof_failed"},
		{errors.New("tls: no key exchanges supported by both client and server"), "no_common_group"},
		{errors.New("something else"), "tls"},
	}
	for _, c := range cases {
		if got := Reason(c.err); got != c.want {
			t.Errorf("Reason(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	if !IsPolicyRefusal(fmt.Errorf("x: %w", ErrBadCertificate)) || IsPolicyRefusal(fmt.Errorf("x: %w", ErrProof)) {
		t.Error("IsPolicyRefusal: bad_certificate is a logged refusal, a failed proof is not")
	}
}

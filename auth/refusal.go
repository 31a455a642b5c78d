package auth

import (
	"fmt"
	"strings"
)

// RefusalError is the type of the TLS policy's refusals, the
// authenticators' and hybridtls's alike. Reason is the label logs and
// metrics use; transports read it through HandshakeReason, so that
// failures are classified by type, never by their text.
type RefusalError struct {
	Reason string
	msg    string
}

// NewRefusal is a refusal of reason whose text is msg, to be wrapped by
// the errors that refuse for it.
func NewRefusal(reason, msg string) *RefusalError { return &RefusalError{reason, msg} }

func (e *RefusalError) Error() string { return e.msg }

// HandshakeReason is the refusal's reason for the transport's HandshakeError.
func (e *RefusalError) HandshakeReason() string { return e.Reason }

// ErrPeerNotAllowed is wrapped when a peer authenticated correctly but is
// not one this side accepts (a pin not among the pinned mode's peers, a
// certificate outside CA mode's allow rules).
var ErrPeerNotAllowed error = NewRefusal("peer_not_allowed", "peer not allowed")

// ErrNotCNSA2 is wrapped when Policy.RequireMLDSA87 (PQT_PROFILE=cnsa2)
// refuses a peer that authenticates with ML-DSA below ML-DSA-87.
var ErrNotCNSA2 = fmt.Errorf("%w: only ML-DSA-87 is accepted", ErrPeerNotAllowed)

// settingRefusal is a refusal of kind (ErrNotCNSA2, CA mode's
// ErrClassicalAuth) whose text names the setting behind it in the
// caller's terms.
type settingRefusal struct {
	kind error
	text string
}

func (e *settingRefusal) Error() string { return e.text }
func (e *settingRefusal) Unwrap() error { return e.kind }

// RefuseBy is a refusal of kind by setting s, which accepts only what
// accepts says, for the reason why.
func (p *Policy) RefuseBy(kind error, s Setting, accepts, why string) error {
	return &settingRefusal{kind: kind, text: fmt.Sprintf("%v: %s accepts only %s: %s", ErrPeerNotAllowed, p.NameOf(s), accepts, why)}
}

// CheckPeerName accepts a name for a peer: 1 to 64 letters, digits, '-',
// '_' and '.', so that it reads unquoted in logs and lists.
func CheckPeerName(name string) error {
	if name == "" || len(name) > 64 || strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) >= 0 {
		return fmt.Errorf("peer name %q: want 1 to 64 letters, digits, '-', '_' or '.'", name)
	}
	return nil
}

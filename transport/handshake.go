package transport

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"reflect"
)

// Reason classifies a failed tunnel handshake for logs, metrics and
// diagnostics. The values are the "reason" label pqtunnel has always used.
type Reason string

const (
	ReasonNotPostQuantum  Reason = "not_post_quantum" // the peer offered no hybrid group
	ReasonNoCommonGroup   Reason = "no_common_group"  // hybrid on both sides, but no group in common
	ReasonBadCertificate  Reason = "bad_certificate"  // a CA-mode certificate did not verify
	ReasonPeerNotAllowed  Reason = "peer_not_allowed" // pin or certificate not accepted
	ReasonRejectedByPeer  Reason = "rejected_by_peer" // the peer refused our identity
	ReasonProofFailed     Reason = "proof_failed"     // the post-handshake proof failed
	ReasonVersionMismatch Reason = "version_mismatch" // no common ALPN: the peer speaks another protocol version
	ReasonTimeout         Reason = "timeout"
	ReasonPortUnreachable Reason = "port_unreachable" // ICMP port unreachable for the peer's UDP port
	ReasonBusy            Reason = "busy"             // the listener sheds load
	ReasonTLS             Reason = "tls"              // anything else
)

// ErrPortUnreachable is a UDP transport's dial failure when the peer's host
// answers with ICMP port unreachable: nothing listens on that UDP port, or a
// firewall rejects (rather than drops) UDP to it. A Fallback dial then
// tries its secondary at once.
var ErrPortUnreachable = errors.New("ICMP port unreachable: nothing listens on the peer's UDP port, or a firewall rejects UDP to it")

// Stage says how far a handshake got before it failed.
type Stage string

const (
	StageConnect      Stage = "connect"      // reaching the peer's socket
	StageTLS          Stage = "tls"          // the TLS (or QUIC) handshake
	StageAuthenticate Stage = "authenticate" // Config.Authenticate
	StageAccept       Stage = "accept"       // refused by the listener before any handshake
)

// HandshakeError is every failure of Dial and every error passed to
// OnHandshakeError. Its text is Err's, so logs read as they always did.
type HandshakeError struct {
	Reason Reason
	Stage  Stage
	// Transport is the Name of the transport whose handshake failed (for a
	// Fallback, the one it tried last).
	Transport string
	Err       error
}

func (e *HandshakeError) Error() string { return e.Err.Error() }
func (e *HandshakeError) Unwrap() error { return e.Err }

// NewHandshakeError classifies err, which failed at stage of transport's
// handshake. An err that is already a *HandshakeError is returned as it is.
func NewHandshakeError(transport string, stage Stage, err error) error {
	if he, ok := errors.AsType[*HandshakeError](err); ok {
		return he
	}
	return &HandshakeError{Reason: Classify(err), Stage: stage, Transport: transport, Err: err}
}

// PeerAlert is a TLS alert the peer sent. Transports wrap it into their
// errors (QUIC carries it as a crypto error code); crypto/tls's own
// "remote error" over TCP is recognised too.
type PeerAlert uint8

func (a PeerAlert) Error() string { return fmt.Sprintf("peer sent %v", tls.AlertError(a)) }

// TLS alert descriptions (RFC 8446, section 6) that carry a meaning here.
const (
	alertHandshakeFailure    = 40
	alertBadCertificate      = 42
	alertCertificateUnknown  = 46
	alertUnknownCA           = 48
	alertInternalError       = 80
	alertNoApplicationProto  = 120
	alertCertificateRequired = 116
)

// PeerAlertOf returns the TLS alert the peer sent, if err carries one.
func PeerAlertOf(err error) (PeerAlert, bool) {
	if a, ok := errors.AsType[PeerAlert](err); ok {
		return a, true
	}
	// crypto/tls reports a received alert as a *net.OpError whose Op is
	// "remote error" and whose Err is its unexported alert type, a uint8.
	if op, ok := errors.AsType[*net.OpError](err); ok && op.Op == "remote error" && op.Err != nil {
		v := reflect.ValueOf(op.Err)
		if v.Kind() == reflect.Uint8 && v.Type().PkgPath() == "crypto/tls" {
			return PeerAlert(v.Uint()), true
		}
	}
	return 0, false
}

// Classify returns the Reason for a handshake failure: from a
// *HandshakeError, from an error that declares its reason with a
// HandshakeReason() string method (hybridtls's policy errors), from the TLS
// alert sent or received, or from a timeout. It never reads message text.
func Classify(err error) Reason {
	if err == nil {
		return ""
	}
	if he, ok := errors.AsType[*HandshakeError](err); ok {
		return he.Reason
	}
	policy := ""
	if r, ok := errors.AsType[interface {
		error
		HandshakeReason() string
	}](err); ok {
		policy = r.HandshakeReason()
	}
	// A failed proof is often only the symptom: over QUIC the peer's alert
	// arrives while we already wait for its proof, and the alert says why.
	if policy != "" && Reason(policy) != ReasonProofFailed {
		return Reason(policy)
	}
	if errors.Is(err, ErrBusy) {
		return ReasonBusy
	}
	if errors.Is(err, ErrPortUnreachable) {
		return ReasonPortUnreachable
	}
	peer, fromPeer := PeerAlertOf(err)
	local, sent := errors.AsType[tls.AlertError](err)
	if fromPeer {
		switch peer {
		case alertBadCertificate, alertCertificateUnknown, alertUnknownCA, alertCertificateRequired:
			return ReasonRejectedByPeer
		case alertNoApplicationProto:
			return ReasonVersionMismatch
		}
	}
	if sent && local == alertNoApplicationProto {
		return ReasonVersionMismatch
	}
	if policy != "" {
		return Reason(policy)
	}
	if ne, ok := errors.AsType[interface {
		error
		Timeout() bool
	}](err); ok && ne.Timeout() {
		return ReasonTimeout
	}
	// handshake_failure is what crypto/tls sends when the hellos share no group.
	if fromPeer && peer == alertHandshakeFailure {
		return ReasonNoCommonGroup
	}
	if sent && local == alertHandshakeFailure {
		return ReasonNoCommonGroup
	}
	return ReasonTLS
}

// PeerRefusedGroups reports whether err is the peer's refusal of the
// offered key-exchange groups: handshake_failure, or internal_error from a
// server whose own policy check failed.
func PeerRefusedGroups(err error) bool {
	a, ok := PeerAlertOf(err)
	return ok && (a == alertHandshakeFailure || a == alertInternalError)
}

package transport

import "errors"

// CloseReason says why a tunnel connection ended: the "reason" of the
// engine's "tunnel disconnected" log line and of its counter. Transports
// decide it from their libraries' error types, never from message text.
type CloseReason string

const (
	ClosePeer           CloseReason = "peer_closed"      // the peer closed the connection
	CloseIdleTimeout    CloseReason = "idle_timeout"     // nothing heard from the peer for IdleTimeout
	CloseKeepAliveLost  CloseReason = "keepalive_lost"   // keep-alives unanswered for KeepAliveTimeout, here or at the peer
	CloseStatelessReset CloseReason = "stateless_reset"  // QUIC: the peer no longer knows the connection (it restarted)
	CloseConnReset      CloseReason = "connection_reset" // TCP: the peer's host reset the connection
	CloseTLS            CloseReason = "tls_error"        // a TLS alert, or a QUIC crypto error
	CloseTransportError CloseReason = "transport_error"  // a protocol violation or another transport failure
	CloseLocal          CloseReason = "local_close"      // this side closed it
	CloseUnknown        CloseReason = "unknown"          // the transport did not say
)

// ClosedError is what Session.AcceptStream returns once the connection has
// ended: the reason, and the transport's own error.
type ClosedError struct {
	Reason CloseReason
	Err    error
}

func (e *ClosedError) Error() string {
	return "tunnel connection closed (" + string(e.Reason) + "): " + e.Err.Error()
}
func (e *ClosedError) Unwrap() error { return e.Err }

// ReasonOf returns the reason err carries as a *ClosedError, or
// CloseUnknown.
func ReasonOf(err error) CloseReason {
	if ce, ok := errors.AsType[*ClosedError](err); ok {
		return ce.Reason
	}
	return CloseUnknown
}

package quic

import (
	"crypto/tls"
	"errors"
	"fmt"
	"testing"

	"github.com/quic-go/quic-go"

	"github.com/pqtunnel/pqtunnel/transport"
)

// QUIC carries TLS alerts as crypto error codes and the listener's load
// shedding as an application error; handshakeError turns them back into
// what transport.Classify reads.
func TestHandshakeErrorReadsQUICCodes(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want transport.Reason
	}{
		{"peer sent handshake_failure", &quic.TransportError{Remote: true, ErrorCode: 0x100 + 40}, transport.ReasonNoCommonGroup},
		{"peer sent bad_certificate", &quic.TransportError{Remote: true, ErrorCode: 0x100 + 42}, transport.ReasonRejectedByPeer},
		{"we sent handshake_failure", &quic.TransportError{ErrorCode: 0x100 + 40}, transport.ReasonNoCommonGroup},
		{"listener busy", &quic.ApplicationError{Remote: true, ErrorCode: codeBusy}, transport.ReasonBusy},
		{"authentication failed", &quic.ApplicationError{Remote: true, ErrorCode: codeAuth}, transport.ReasonTLS},
		{"not a crypto error", &quic.TransportError{Remote: true, ErrorCode: quic.ProtocolViolation}, transport.ReasonTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := handshakeError(transport.StageTLS, fmt.Errorf("quic handshake: %w", tt.err))
			var he *transport.HandshakeError
			if !errors.As(err, &he) || he.Reason != tt.want || he.Transport != Name {
				t.Errorf("handshakeError(%v) = %+v, want reason %q", tt.err, he, tt.want)
			}
		})
	}
	local := handshakeError(transport.StageTLS, &quic.TransportError{ErrorCode: 0x100 + 80})
	if a, ok := errors.AsType[tls.AlertError](local); !ok || a != 80 {
		t.Errorf("a local crypto error does not carry its alert: %v", local)
	}
}

// closeReason reads quic-go's error types, never their text.
func TestCloseReason(t *testing.T) {
	tests := []struct {
		err  error
		want transport.CloseReason
	}{
		{&quic.StatelessResetError{}, transport.CloseStatelessReset},
		{&quic.IdleTimeoutError{}, transport.CloseIdleTimeout},
		{&quic.ApplicationError{Remote: true, ErrorCode: codeKeepAlive}, transport.CloseKeepAliveLost},
		{&quic.ApplicationError{ErrorCode: codeKeepAlive}, transport.CloseKeepAliveLost},
		{&quic.ApplicationError{Remote: true, ErrorCode: codeNormal}, transport.ClosePeer},
		{&quic.ApplicationError{ErrorCode: codeNormal}, transport.CloseLocal},
		{&quic.TransportError{Remote: true, ErrorCode: 0x100 + 42}, transport.CloseTLS},
		{&quic.TransportError{Remote: true, ErrorCode: quic.NoError}, transport.ClosePeer},
		{&quic.TransportError{ErrorCode: quic.ProtocolViolation}, transport.CloseTransportError},
		{errors.New("something else"), transport.CloseUnknown},
	}
	for _, tt := range tests {
		if got := closeReason(fmt.Errorf("wrapped: %w", tt.err)); got != tt.want {
			t.Errorf("closeReason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

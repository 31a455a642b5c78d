package tlsmux

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/libp2p/go-yamux/v5"

	"github.com/pqtunnel/pqtunnel/transport"
)

// closeReason reads yamux's, crypto/tls's and the socket's error types and
// errnos, never their text.
func TestCloseReason(t *testing.T) {
	sysErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", errno)}
	}
	tests := []struct {
		err  error
		want transport.CloseReason
	}{
		{&yamux.GoAwayError{Remote: true}, transport.ClosePeer},
		{yamux.ErrSessionShutdown, transport.CloseLocal},
		{io.EOF, transport.ClosePeer},
		{yamux.ErrKeepAliveTimeout, transport.CloseKeepAliveLost},
		{yamux.ErrConnectionWriteTimeout, transport.CloseKeepAliveLost},
		{sysErr(syscall.ETIMEDOUT), transport.CloseKeepAliveLost},
		{sysErr(syscall.ECONNRESET), transport.CloseConnReset},
		{tls.AlertError(80), transport.CloseTLS},
		{net.ErrClosed, transport.CloseLocal},
		{errors.New("invalid protocol version"), transport.CloseTransportError},
	}
	for _, tt := range tests {
		if got := closeReason(fmt.Errorf("wrapped: %w", tt.err)); got != tt.want {
			t.Errorf("closeReason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

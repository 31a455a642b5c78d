package quic

import (
	"errors"
	"syscall"
)

// isPortUnreachable reports the error a connected UDP socket's read returns
// after an ICMP port unreachable: Windows reports it as WSAECONNRESET.
func isPortUnreachable(err error) bool {
	return errors.Is(err, syscall.WSAECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)
}

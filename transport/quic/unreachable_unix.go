//go:build !windows

package quic

import (
	"errors"
	"syscall"
)

// isPortUnreachable reports the error a connected UDP socket's read returns
// after an ICMP port unreachable.
func isPortUnreachable(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

//go:build windows

package check

import (
	"errors"
	"syscall"

	"golang.org/x/sys/windows"
)

// isRefused reports a peer that refused the TCP connection.
func isRefused(err error) bool {
	return errors.Is(err, windows.WSAECONNREFUSED) || errors.Is(err, syscall.ECONNREFUSED)
}

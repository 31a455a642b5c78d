//go:build windows

package check

import (
	"errors"
	"syscall"

	"golang.org/x/sys/windows"
)

// IsRefused reports a connection the other end refused: nothing listens
// on that TCP port (or Unix socket).
func IsRefused(err error) bool {
	return errors.Is(err, windows.WSAECONNREFUSED) || errors.Is(err, syscall.ECONNREFUSED)
}

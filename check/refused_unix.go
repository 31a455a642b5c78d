//go:build unix

package check

import (
	"errors"
	"syscall"
)

// IsRefused reports a connection the other end refused: nothing listens
// on that TCP port (or Unix socket).
func IsRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}

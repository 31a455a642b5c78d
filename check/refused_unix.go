//go:build unix

package check

import (
	"errors"
	"syscall"
)

// isRefused reports a peer that refused the TCP connection.
func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}

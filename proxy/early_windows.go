//go:build windows

package proxy

import (
	"errors"
	"syscall"

	"golang.org/x/sys/windows"
)

// readNow would read what the socket already holds without waiting; Windows
// sockets offer no such read through RawConn, so nothing is sent early and
// the copy that follows reads everything.
func readNow(uintptr, []byte) (int, error) { return 0, nil }

// isRefused reports an origin that refused the connection.
func isRefused(err error) bool {
	return errors.Is(err, windows.WSAECONNREFUSED) || errors.Is(err, syscall.ECONNREFUSED)
}

// acceptBroken reports an accept error no retry can mend: the listening
// socket itself is unusable.
func acceptBroken(err error) bool {
	return errors.Is(err, windows.WSAEINVAL) || errors.Is(err, windows.WSAENOTSOCK)
}

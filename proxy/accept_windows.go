//go:build windows

package proxy

import (
	"errors"

	"golang.org/x/sys/windows"
)

// acceptBroken reports an accept error no retry can mend: the listening
// socket itself is unusable.
func acceptBroken(err error) bool {
	return errors.Is(err, windows.WSAEINVAL) || errors.Is(err, windows.WSAENOTSOCK)
}

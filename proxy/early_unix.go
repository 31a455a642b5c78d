//go:build unix

package proxy

import (
	"errors"
	"syscall"
)

// readNow reads what the socket fd already holds, without waiting: no data
// yet is n == 0 and no error.
func readNow(fd uintptr, buf []byte) (int, error) {
	n, err := syscall.Read(int(fd), buf)
	switch {
	case n > 0:
		return n, nil
	case err == nil, errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
		return 0, nil
	default:
		return 0, err
	}
}

// isRefused reports an origin that refused the connection.
func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}

// acceptBroken reports an accept error no retry can mend: the listening
// socket itself is unusable (shut down, or not a listening socket any more).
func acceptBroken(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EBADF) || errors.Is(err, syscall.ENOTSOCK)
}

//go:build unix

package tcproute

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

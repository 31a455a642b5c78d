//go:build unix

package proxy

import (
	"errors"
	"syscall"
)

// acceptBroken reports an accept error no retry can mend: the listening
// socket itself is unusable (shut down, or not a listening socket any more).
func acceptBroken(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EBADF) || errors.Is(err, syscall.ENOTSOCK)
}

//go:build !linux

package wan

import "errors"

// Available says why the bed cannot be built here: it needs Linux.
func Available() error {
	return errors.New("the WAN test bed needs Linux (network namespaces and TUN devices)")
}

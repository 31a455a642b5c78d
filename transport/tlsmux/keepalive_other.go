//go:build !linux

package tlsmux

import (
	"net"

	"github.com/pqtunnel/pqtunnel/transport"
)

// setUserTimeout does nothing where TCP_USER_TIMEOUT is not offered: yamux's
// own keep-alive timeout notices a dead path, later.
func setUserTimeout(net.Conn, *transport.Config) {}

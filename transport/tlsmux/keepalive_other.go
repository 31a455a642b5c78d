//go:build !linux

package tlsmux

import (
	"net"

	"github.com/pqtunnel/pqtunnel/transport"
)

// tuneSocket does nothing where TCP_USER_TIMEOUT and TCP_CONGESTION are
// not offered: yamux's own keep-alive timeout notices a dead path, later,
// and the configuration refuses a congestion control there.
func tuneSocket(net.Conn, *transport.Config) {}

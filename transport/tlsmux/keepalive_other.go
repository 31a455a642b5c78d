//go:build !linux

package tlsmux

import (
	"net"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
)

// ackWatch is false: yamux's own keep-alive watches the connection.
const ackWatch = false

// tuneSocket does nothing where TCP_CONGESTION is not offered; the
// configuration refuses a congestion control there.
func tuneSocket(net.Conn, *transport.Config) {}

// watchAcks does nothing where TCP_INFO is not read: yamux's own
// keep-alive timeout notices a dead path, later.
func watchAcks(*tcpSession, net.Conn, *transport.Config) {}

// pathRTT is zero where TCP_INFO is not read: streams start with the
// window the settings give, whatever the path.
func pathRTT(net.Conn) time.Duration { return 0 }

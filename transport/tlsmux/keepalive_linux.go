package tlsmux

import (
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pqtunnel/pqtunnel/transport"
)

// setUserTimeout makes the kernel end the tunnel's TCP connection when
// data sent on it stays unacknowledged for half of KeepAliveTimeout: the
// keep-alive pings (every ProbeInterval) keep data in flight on an idle
// connection, so a dead path is noticed within KeepAliveTimeout, while a
// slow but live path keeps acknowledging and is left alone. c has its
// defaults applied; with the probes off nothing changes.
func setUserTimeout(conn net.Conn, c *transport.Config) {
	probe := c.ProbeInterval()
	tc, ok := conn.(*net.TCPConn)
	if probe <= 0 || !ok {
		return
	}
	// The first ping after the path died goes out up to one interval
	// later, and the kernel acts on its retransmission timer, which lags:
	// two intervals short of the timeout keeps the whole within it.
	timeout := max(c.KeepAliveTimeout-2*probe, time.Second)
	rc, err := tc.SyscallConn()
	if err != nil {
		return // not a socket: yamux's own keep-alive timeout still applies
	}
	_ = rc.Control(func(fd uintptr) {
		// A failure leaves yamux's own keep-alive timeout in charge.
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(timeout.Milliseconds()))
	})
}

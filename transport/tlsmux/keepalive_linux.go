package tlsmux

import (
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pqtunnel/pqtunnel/transport"
)

// tuneSocket sets the tunnel socket's options from c, which has its
// defaults applied: the congestion control, when c names one, and the
// user timeout (see below). A failure is logged and the kernel's defaults
// stay in place.
func tuneSocket(conn net.Conn, c *transport.Config) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return // not a socket: nothing to tune
	}
	var serr error
	_ = rc.Control(func(fd uintptr) {
		if c.TCPCongestion != "" {
			if err := unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, c.TCPCongestion); err != nil {
				serr = fmt.Errorf("set congestion control %s: %w", c.TCPCongestion, err)
			}
		}
		if timeout, ok := userTimeout(c); ok {
			if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(timeout.Milliseconds())); err != nil && serr == nil {
				serr = fmt.Errorf("set user timeout: %w", err)
			}
		}
	})
	if serr != nil {
		c.Logger.Warn("tunnel socket option not set: the kernel's default applies", "transport", Name, "err", serr)
	}
}

// userTimeout is how long the kernel may leave data sent on the tunnel's
// TCP connection unacknowledged before it ends the connection: the
// keep-alive pings (every ProbeInterval) keep data in flight on an idle
// connection, so a dead path is noticed within KeepAliveTimeout, while a
// slow but live path keeps acknowledging and is left alone. The first ping
// after the path died goes out up to one interval later, and the kernel
// acts on its retransmission timer, which lags: two intervals short of the
// timeout keeps the whole within it. With the probes off there is none.
func userTimeout(c *transport.Config) (time.Duration, bool) {
	probe := c.ProbeInterval()
	if probe <= 0 {
		return 0, false
	}
	return max(c.KeepAliveTimeout-2*probe, time.Second), true
}

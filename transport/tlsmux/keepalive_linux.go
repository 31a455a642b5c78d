package tlsmux

import (
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pqtunnel/pqtunnel/transport"
)

// ackWatch says that watchAcks watches the connection, not yamux's own
// keep-alive.
const ackWatch = true

// maxKeepAliveProbes is Linux's largest TCP_KEEPCNT.
const maxKeepAliveProbes = 127

// tuneSocket sets the congestion control of the tunnel's socket: the one
// c names, or transport.DefaultTCPCongestion when c names none; c has its
// defaults applied. A named one that fails is logged; the default one
// fails quietly where the kernel does not offer it (a module not loaded,
// or not in net.ipv4.tcp_allowed_congestion_control for this process).
// Either way the kernel's default stays in place.
func tuneSocket(conn net.Conn, c *transport.Config) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return // not a socket: nothing to tune
	}
	name := congestionFor(c)
	var serr error
	_ = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, name)
	})
	switch {
	case serr == nil:
	case c.TCPCongestion == "":
		c.Logger.Debug("tunnel socket congestion control not set: the kernel's default applies", "transport", Name,
			"err", fmt.Errorf("set congestion control %s: %w", name, serr))
	default:
		c.Logger.Warn("tunnel socket congestion control not set: the kernel's default applies", "transport", Name,
			"err", fmt.Errorf("set congestion control %s: %w", name, serr))
	}
}

// congestionFor is the congestion control tuneSocket asks for.
func congestionFor(c *transport.Config) string {
	if c.TCPCongestion != "" {
		return c.TCPCongestion
	}
	return transport.DefaultTCPCongestion
}

// leaveStaleBBR moves a tunnel socket whose path's RTT grew from BBR to
// CUBIC. BBR sizes its window by the shortest RTT it saw in the last 10 s,
// the old path's, so a stream that stays on the old connection while it
// is being replaced (one open already, or opened before the successor is
// up) crawls for those 10 s at a few packets per RTT; CUBIC has no such
// memory, and from the window it is handed it slow-starts to the path's
// within a few RTTs. BBR itself cannot be restarted: it takes the kernel's
// minimum RTT again, which remembers minutes. Another congestion control
// is left as it is.
func leaveStaleBBR(rc syscall.RawConn, c *transport.Config) {
	_ = rc.Control(func(fd uintptr) {
		name, err := unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
		if err != nil || name != "bbr" {
			return
		}
		if err := unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, "cubic"); err != nil {
			c.Logger.Debug("tunnel socket left on BBR after its path's RTT grew: a stream still on it is slow until BBR forgets the old RTT", "transport", Name,
				"err", fmt.Errorf("set congestion control cubic: %w", err))
			return
		}
		c.Logger.Info("tunnel socket's congestion control moved from bbr to cubic: its path's RTT grew, and BBR would keep the old one for 10 s", "transport", Name)
	})
}

// staleBBRChecks is how many checks in a row, busy or not, must find the
// path's RTT grown before leaveStaleBBR: the RTT grown for over a probe
// interval, which BBR's own queue does not reach (its window is twice the
// path's bandwidth-delay product, so its queue holds at most one more
// RTT, and growth wants twice plus 20 ms). A move wants as many quiet
// ones (transport.RTTGrewChecks), but busy checks count here, because a
// transfer already on the socket is what keeps it busy, and crawls until
// the switch.
const staleBBRChecks = 2

// busyInFlight is how many unacknowledged segments make a tunnel socket
// busy for transport.RTTGrowth: more than requests and pings keep in
// flight, less than a window of bulk.
const busyInFlight = 16

// pathRTT is the minimum RTT the kernel has measured on conn's socket, or
// zero where it says none.
func pathRTT(conn net.Conn) time.Duration {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return 0
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	var rtt time.Duration
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			rtt = time.Duration(info.Min_rtt) * time.Microsecond
		}
	})
	return rtt
}

// watchAcks closes s as keep-alive lost once data sent on its TCP
// connection has gone unacknowledged by the peer's kernel for about
// KeepAliveTimeout: it pings every ProbeInterval, which keeps data in
// flight on an idle connection, so a dead path is noticed within the
// timeout, while a slow path, or a peer too busy to read (its kernel still
// acknowledges, if only a zero window), is left alone. A ping whose pong is
// lost holds back every later one (yamux keeps one outstanding, for up to
// its ConnectionWriteTimeout), and once the ping itself is acknowledged
// nothing would be in flight; so the kernel's own keep-alive probes go out
// too, every ProbeInterval of silence, and an unanswered one counts as
// data waiting. The kernel's own
// TCP_USER_TIMEOUT is not used: it also ends a connection whose peer
// advertises a zero window for that long. A peer whose kernel acknowledges
// but that has sent nothing, not even a pong, for IdleTimeout is stopped or
// stuck: that ends the session too, as idle. c has its defaults applied;
// with the probes off nothing is watched.
func watchAcks(s *tcpSession, conn net.Conn, c *transport.Config) {
	probe := c.ProbeInterval()
	tc, ok := conn.(*net.TCPConn)
	if probe <= 0 || !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return // not a socket: yamux's own keep-alive timeout applies
	}
	// The kernel ends the connection itself only after maxKeepAliveProbes
	// unanswered probes, which the timeout below comes well before.
	if err := tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: probe, Interval: probe, Count: maxKeepAliveProbes}); err != nil {
		c.Logger.Debug("tunnel socket keep-alive probes not set: only pings probe the path", "transport", Name, "err", err)
	}
	// Checked every interval, so the last check is at most one late.
	limit := c.KeepAliveTimeout - probe
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.routineWatchAcks(rc, probe, limit, c.IdleTimeout, c)
	}()
	go func() {
		defer s.wg.Done()
		s.routinePing(probe)
	}()
}

// routinePing pings every interval until the session ends. A late or
// missing pong ends nothing here: the acknowledgements say whether the
// path lives.
func (s *tcpSession) routinePing(every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-s.ys.CloseChan():
			return
		case <-tick.C:
		}
		_, _ = s.ys.Ping() // only the data in flight matters
	}
}

// boundsUnsent reports whether a tunnel socket whose minimum RTT is rtt
// gets TCP_NOTSENT_LOWAT and its session the backlog bound (see
// notSentLowWater). Over a path of under a millisecond what the socket
// holds drains within milliseconds, and on loopback the bounds cost a bulk
// sender 15–45 % more CPU per GB for nothing. It is judged by the minimum
// RTT, not the smoothed one, which queueing in the socket buffers inflates
// to milliseconds even on loopback; a path whose RTT grows later gets the
// bounds once the kernel's minimum follows (its window is
// net.ipv4.tcp_min_rtt_wlen, 300 s by default).
func boundsUnsent(rtt time.Duration) bool { return rtt >= time.Millisecond }

// boundUnsent sets the socket's TCP_NOTSENT_LOWAT to notSentLowWater.
func boundUnsent(fd int) error {
	return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowWater)
}

func (s *tcpSession) routineWatchAcks(rc syscall.RawConn, every, limit, idle time.Duration, c *transport.Config) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	bounded := false
	for first := true; ; first = false {
		if !first {
			select {
			case <-s.ys.CloseChan():
				return
			case <-tick.C:
			}
		}
		var info *unix.TCPInfo
		var err error
		if cerr := rc.Control(func(fd uintptr) {
			info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			if err == nil && !bounded && boundsUnsent(time.Duration(info.Min_rtt)*time.Microsecond) {
				bounded = true
				s.gw.longPath.Store(true)
				if lerr := boundUnsent(int(fd)); lerr != nil {
					c.Logger.Debug("tunnel socket unsent-bytes bound not set: small requests may wait behind bulk already in the socket", "transport", Name,
						"err", fmt.Errorf("set TCP_NOTSENT_LOWAT: %w", lerr))
				}
			}
		}); cerr != nil || err != nil {
			return // the socket is closed, or says nothing: yamux's own timeout applies
		}
		if s.growth.Check(time.Duration(info.Rtt)*time.Microsecond, time.Duration(info.Min_rtt)*time.Microsecond, info.Unacked > busyInFlight, s.ys.CloseChan(), &s.wg) == staleBBRChecks {
			leaveStaleBBR(rc, c)
		}
		if first {
			continue // judged from the first tick on
		}
		var reason transport.CloseReason
		switch waiting := info.Unacked > 0 || info.Probes > 0; {
		case waiting && time.Duration(info.Last_ack_recv)*time.Millisecond >= limit:
			reason = transport.CloseKeepAliveLost
		case s.rc.silence() >= idle:
			reason = transport.CloseIdleTimeout
		default:
			continue
		}
		s.lost.Store(&reason)
		_ = s.ys.Close() // the reason is recorded; the session is gone either way
		return
	}
}

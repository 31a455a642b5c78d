package tlsmux

import (
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// pathInFlight is what a 200 Mbit/s path with a 200 ms RTT holds in flight.
const pathInFlight = 200e6 / 8 * 0.2

// sendBufferMax is Linux's default ceiling of a TCP socket's send buffer
// (net.ipv4.tcp_wmem), whose unsent bytes yamux counts against a window.
const sendBufferMax = 4 << 20

// A stream's window may grow past what a long fat path holds in flight plus
// the sender's socket buffer, within the connection's memory bound.
func TestStreamWindowCoversALongFatPath(t *testing.T) {
	c := (&transport.Config{}).WithDefaults()
	mem := newConnMemory(c.MaxConnMemory, c.MaxStreams, c.StreamWindow, 0)
	y := yamuxConfig(c, mem)
	if got := int(y.MaxStreamWindowSize); got < pathInFlight+sendBufferMax {
		t.Errorf("MaxStreamWindowSize %d, want at least %d (200 Mbit/s × 200 ms + a %d-byte send buffer)", got, int(pathInFlight+sendBufferMax), sendBufferMax)
	}
	if got := int(y.MaxStreamWindowSize); got > mem.limit-mem.headroom {
		t.Errorf("MaxStreamWindowSize %d does not fit the %d bytes the memory bound leaves for growth", got, mem.limit-mem.headroom)
	}
}

// yamux re-measures the RTT its window growth is judged by as often as the
// keep-alive probes go out, so that a tunnel follows a path whose RTT grew
// after it came up, not every 30 s (yamux's default).
func TestRTTIsMeasuredEveryProbe(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    transport.Config
		want time.Duration
	}{
		{"defaults", transport.Config{}, 750 * time.Millisecond},
		{"short keep-alive", transport.Config{KeepAlive: 200 * time.Millisecond}, 200 * time.Millisecond},
		{"probes off", transport.Config{KeepAliveTimeout: -1, KeepAlive: 5 * time.Second}, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c.WithDefaults()
			y := yamuxConfig(c, newConnMemory(c.MaxConnMemory, c.MaxStreams, c.StreamWindow, 0))
			if y.MeasureRTTInterval != tc.want {
				t.Errorf("MeasureRTTInterval %s, want %s", y.MeasureRTTInterval, tc.want)
			}
		})
	}
}

// A stream may send its whole initial window before the peer reads a
// byte: yamux's 256 KiB at the defaults, 2 MiB where the listen side
// allows 63 streams per connection.
func TestStreamSendsItsInitialWindowUnread(t *testing.T) {
	for _, tc := range []struct {
		maxStreams int
		want       int
	}{{0, 256 << 10}, {63, 2 << 20}} {
		cc, sc := transporttest.Configs(t)
		cc.MaxStreams, sc.MaxStreams = tc.maxStreams, tc.maxStreams
		client, server := transporttest.SessionPair(t, Transport{}, cc, sc)
		st, accepted := transporttest.OpenAccepted(t, client, server, []byte("a"))
		defer st.Reset()
		defer accepted.Reset()
		// The peer has read the first byte and nothing after it.
		_ = st.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := st.Write(make([]byte, 8<<20)) // ends at the deadline
		if got := n + 1; got != tc.want {
			t.Errorf("MaxStreams %d: %d bytes sent before the peer read them (the write ended with %v), want the %d-byte initial window", tc.maxStreams, got, err, tc.want)
		}
	}
}

package quic

import (
	"testing"

	"github.com/pqtunnel/pqtunnel/transport"
)

// pathInFlight is what a 200 Mbit/s path with a 200 ms RTT holds in flight.
const pathInFlight = 200e6 / 8 * 0.2

// A stream's and the connection's flow-control windows may grow past what
// a long fat path holds in flight, and the connection's stays within its
// memory bound.
func TestWindowsCoverALongFatPath(t *testing.T) {
	c := (&transport.Config{}).WithDefaults()
	q := quicConfig(c)
	if q.MaxStreamReceiveWindow < pathInFlight {
		t.Errorf("MaxStreamReceiveWindow %d, want at least %d (200 Mbit/s × 200 ms)", q.MaxStreamReceiveWindow, int(pathInFlight))
	}
	if q.MaxConnectionReceiveWindow < pathInFlight || q.MaxConnectionReceiveWindow < q.MaxStreamReceiveWindow {
		t.Errorf("MaxConnectionReceiveWindow %d, want at least %d and the stream window %d", q.MaxConnectionReceiveWindow, int(pathInFlight), q.MaxStreamReceiveWindow)
	}
	if q.MaxConnectionReceiveWindow > uint64(c.MaxConnMemory) {
		t.Errorf("MaxConnectionReceiveWindow %d exceeds the memory bound %d", q.MaxConnectionReceiveWindow, c.MaxConnMemory)
	}
	// A small bound clips both.
	c = (&transport.Config{MaxConnMemory: 2 << 20}).WithDefaults()
	if q := quicConfig(c); q.MaxConnectionReceiveWindow > 2<<20 || q.MaxStreamReceiveWindow > 2<<20 {
		t.Errorf("with a 2 MiB bound: windows %d (stream), %d (connection)", q.MaxStreamReceiveWindow, q.MaxConnectionReceiveWindow)
	}
}

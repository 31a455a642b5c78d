package tlsmux

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
)

// Whatever the order of stream openings (the peer's, capped by count, and
// ours), window growth and releases, the windows granted stay within the
// limit, and everything comes back when the streams end. What is granted
// is counted as yamux grants it, beside connMemory's own count: the
// initial window of its config for every stream it keeps, whatever it
// reserved for it, and each growth the bound allowed.
func TestConnMemoryNeverExceedsItsLimit(t *testing.T) {
	for _, tc := range []struct {
		limit, maxStreams int
		rtt               time.Duration
	}{{1 << 20, 4096, 0}, {4 << 20, 4096, 0}, {64 << 20, 4096, 0}, {64 << 20, 7, 0}, {256 << 20, 63, 0}, {256 << 20, 4096, 80 * time.Millisecond}, {64 << 20, 4096, 200 * time.Millisecond}} {
		limit := tc.limit
		m := newConnMemory(limit, tc.maxStreams, 16<<20, tc.rtt)
		if m.headroom > limit/2 {
			t.Fatalf("limit %d: headroom %d is more than half", limit, m.headroom)
		}
		c := (&transport.Config{MaxConnMemory: limit, MaxStreams: tc.maxStreams}).WithDefaults()
		initial := int(yamuxConfig(c, m).InitialStreamWindowSize)
		rng := rand.New(rand.NewPCG(uint64(limit), uint64(tc.maxStreams)))
		type stream struct {
			mem     *streamMemory
			peer    bool
			granted int
		}
		var live []stream
		peers, granted := 0, 0
		for step := range 200000 {
			switch op := rng.IntN(10); {
			case op < 3: // the peer opens a stream, which yamux refuses past the count after reserving
				sp, _ := m.span()
				if err := sp.ReserveMemory(yamuxWindow, priorityNewStream); err != nil {
					t.Fatalf("a stream of the peer's was refused memory: %v", err)
				}
				if peers == m.peerStreams {
					sp.Done()
					break
				}
				peers++
				live = append(live, stream{sp.(*streamMemory), true, initial})
				granted += initial
			case op < 5: // we open one
				if !m.reserveOpen() {
					break
				}
				sp, _ := m.span()
				if rng.IntN(8) == 0 {
					break // the open failed before yamux reserved: the prepaid window stays for the next stream
				}
				if err := sp.ReserveMemory(yamuxWindow, priorityNewStream); err != nil {
					t.Fatal(err)
				}
				live = append(live, stream{sp.(*streamMemory), false, initial})
				granted += initial
			case op < 8 && len(live) > 0: // a window grows
				s := &live[rng.IntN(len(live))]
				grow := 1 + rng.IntN(2<<20)
				if s.mem.ReserveMemory(grow, 128) == nil { // may be refused
					s.granted += grow
					granted += grow
				}
			case len(live) > 0: // a stream ends
				i := rng.IntN(len(live))
				live[i].mem.Done()
				granted -= live[i].granted
				if live[i].peer {
					peers--
				}
				live = append(live[:i], live[i+1:]...)
			}
			if u := m.inUse(); u > limit {
				t.Fatalf("limit %d, step %d: %d bytes of window reserved", limit, step, u)
			}
			if granted > limit {
				t.Fatalf("limit %d, %d streams, step %d: yamux granted %d bytes of window", limit, tc.maxStreams, step, granted)
			}
		}
		for _, s := range live {
			s.mem.Done()
		}
		if u := m.inUse(); u != m.prepaid*m.window {
			t.Errorf("limit %d: %d bytes in use after every stream ended, want the %d prepaid windows", limit, u, m.prepaid)
		}
	}
}

// A stream starts with yamux's 256 KiB window at the defaults, and with a
// larger one where fewer streams per connection leave room for it in the
// half of the bound that new streams may take, or where a long path needs
// it and at least 31 such windows fit. The streams this side opens are
// bounded as if the peer had measured an RTT a quarter longer.
func TestInitialWindowTradesStreamsForAStart(t *testing.T) {
	const ms = time.Millisecond
	for _, tc := range []struct {
		limit, maxStreams  int
		rtt                time.Duration
		window, peerStream int
		opens              int
	}{
		{256 << 20, 4096, 0, 256 << 10, 511, 511}, // the defaults
		{256 << 20, 4096, 4 * ms, 256 << 10, 511, 511},
		{256 << 20, 4096, 5 * ms, 256 << 10, 511, 255}, // the peer may have measured over 5.2 ms
		{256 << 20, 4096, 8 * ms, 512 << 10, 255, 255},
		{256 << 20, 4096, 20 * ms, 1 << 20, 127, 63},
		{256 << 20, 4096, 30 * ms, 2 << 20, 63, 63},
		{256 << 20, 4096, 80 * ms, 4 << 20, 31, 31},
		{256 << 20, 4096, 200 * ms, 4 << 20, 31, 31}, // no fewer than 31 streams
		{256 << 20, 63, 0, 2 << 20, 63, 63},
		{256 << 20, 63, 80 * ms, 4 << 20, 31, 31},
		{256 << 20, 31, 0, 4 << 20, 31, 31},
		{256 << 20, 15, 200 * ms, 8 << 20, 15, 15},
		{256 << 20, 1, 0, 16 << 20, 1, 1}, // no further than the largest window
		{64 << 20, 63, 0, 512 << 10, 63, 63},
		{64 << 20, 4096, 80 * ms, 1 << 20, 31, 31},
		{16 << 20, 4096, 80 * ms, 256 << 10, 31, 31}, // too small a bound for a larger window
		{1 << 20, 4096, 0, 256 << 10, 1, 1},
	} {
		m := newConnMemory(tc.limit, tc.maxStreams, 16<<20, tc.rtt)
		if m.window != tc.window || m.peerStreams != tc.peerStream || m.opens != tc.opens {
			t.Errorf("limit %d, %d streams, RTT %s: window %d for %d peer streams, %d of ours; want %d for %d, %d", tc.limit, tc.maxStreams, tc.rtt,
				m.window, m.peerStreams, m.opens, tc.window, tc.peerStream, tc.opens)
		}
		if m.headroom > tc.limit/2 {
			t.Errorf("limit %d, %d streams, RTT %s: the peer's windows take %d, more than half", tc.limit, tc.maxStreams, tc.rtt, m.headroom)
		}
	}
}

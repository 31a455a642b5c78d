package tlsmux

import (
	"math/rand/v2"
	"testing"

	"github.com/pqtunnel/pqtunnel/transport"
)

// Whatever the order of stream openings (the peer's, capped by count, and
// ours), window growth and releases, the windows granted stay within the
// limit, and everything comes back when the streams end. What is granted
// is counted as yamux grants it, beside connMemory's own count: the
// initial window of its config for every stream it keeps, whatever it
// reserved for it, and each growth the bound allowed.
func TestConnMemoryNeverExceedsItsLimit(t *testing.T) {
	for _, tc := range []struct{ limit, maxStreams int }{{1 << 20, 4096}, {4 << 20, 4096}, {64 << 20, 4096}, {64 << 20, 7}, {256 << 20, 63}} {
		limit := tc.limit
		m := newConnMemory(limit, tc.maxStreams, 16<<20)
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
// half of the bound that new streams may take.
func TestInitialWindowTradesStreamsForAStart(t *testing.T) {
	for _, tc := range []struct {
		limit, maxStreams  int
		window, peerStream int
	}{
		{256 << 20, 4096, 256 << 10, 511}, // the defaults
		{256 << 20, 63, 2 << 20, 63},
		{256 << 20, 31, 4 << 20, 31},
		{256 << 20, 1, 16 << 20, 1}, // no further than the largest window
		{64 << 20, 63, 512 << 10, 63},
		{1 << 20, 4096, 256 << 10, 1},
	} {
		m := newConnMemory(tc.limit, tc.maxStreams, 16<<20)
		if m.window != tc.window || m.peerStreams != tc.peerStream {
			t.Errorf("limit %d, %d streams: window %d for %d peer streams, want %d for %d", tc.limit, tc.maxStreams, m.window, m.peerStreams, tc.window, tc.peerStream)
		}
		if m.headroom > tc.limit/2 {
			t.Errorf("limit %d, %d streams: the peer's windows take %d, more than half", tc.limit, tc.maxStreams, m.headroom)
		}
	}
}

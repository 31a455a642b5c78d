package tlsmux

import (
	"math/rand/v2"
	"testing"
)

// Whatever the order of stream openings (the peer's, capped by count, and
// ours), window growth and releases, the windows granted stay within the
// limit, and everything comes back when the streams end.
func TestConnMemoryNeverExceedsItsLimit(t *testing.T) {
	for _, limit := range []int{1 << 20, 4 << 20, 64 << 20} {
		m := newConnMemory(limit, 4096)
		if m.headroom > limit/2 {
			t.Fatalf("limit %d: headroom %d is more than half", limit, m.headroom)
		}
		rng := rand.New(rand.NewPCG(uint64(limit), 1))
		type stream struct {
			mem  *streamMemory
			peer bool
		}
		var live []stream
		peers := 0
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
				live = append(live, stream{sp.(*streamMemory), true})
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
				live = append(live, stream{sp.(*streamMemory), false})
			case op < 8 && len(live) > 0: // a window grows
				s := live[rng.IntN(len(live))]
				_ = s.mem.ReserveMemory(1+rng.IntN(2<<20), 128) // may be refused
			case len(live) > 0: // a stream ends
				i := rng.IntN(len(live))
				live[i].mem.Done()
				if live[i].peer {
					peers--
				}
				live = append(live[:i], live[i+1:]...)
			}
			if u := m.inUse(); u > limit {
				t.Fatalf("limit %d, step %d: %d bytes of window granted", limit, step, u)
			}
		}
		for _, s := range live {
			s.mem.Done()
		}
		if u := m.inUse(); u != m.prepaid*yamuxWindow {
			t.Errorf("limit %d: %d bytes in use after every stream ended, want the %d prepaid windows", limit, u, m.prepaid)
		}
	}
}

package tlsmux

import (
	"sync"
	"time"

	"github.com/libp2p/go-yamux/v5"

	"github.com/pqtunnel/pqtunnel/transport"
)

// yamuxWindow is the receive window yamux reserves for every new stream
// (its unexported initialStreamWindow), whichever side opened it, and the
// least a stream starts with.
const yamuxWindow = 256 << 10

// priorityNewStream is the priority yamux reserves a new stream's window
// with; window growth uses a lower one.
const priorityNewStream = 255

// errConnMemory is returned by OpenStream when the session's receive
// windows already take its memory bound.
var errConnMemory = transport.ErrConnMemory

// connMemory bounds the receive windows of one yamux session. yamux cannot
// be told to refuse a stream the peer opens (a failed reservation there
// ends the session), so the peer's streams are capped by count instead:
// at most peerStreams of them, whose windows the headroom keeps free.
// Everything else (windows of streams we open, every window growth) must
// fit in limit minus that headroom. Whatever the order of events, the
// windows granted never add up to more than limit.
type connMemory struct {
	limit int
	// window is the receive window every stream starts with. yamux
	// reserves only its own 256 KiB for a new stream and grants the rest
	// with its first window update, so connMemory charges the whole
	// window when yamux reserves.
	window      int
	peerStreams int
	// opens is how many streams of ours the peer is taken to allow (see
	// transport.StreamBound.Opens), at most peerStreams.
	opens    int
	headroom int
	// byMemory is true when limit, not MaxStreams, sets peerStreams.
	byMemory bool

	mu   sync.Mutex
	used int
	// prepaid counts new-stream windows reserved by OpenStream ahead of
	// yamux's own reservation, which then takes one instead of adding.
	// They are interchangeable: one left by a failed OpenStream pays for
	// the next stream, whoever opens it.
	prepaid int
}

// newConnMemory bounds a session's windows by limit, its peer's streams by
// maxStreams, and a stream's window by maxWindow (yamux's
// MaxStreamWindowSize), over a path whose RTT is rtt (zero: unknown).
func newConnMemory(limit, maxStreams, maxWindow int, rtt time.Duration) *connMemory {
	w := initialWindow(limit, maxStreams, maxWindow, rtt)
	n := streamsFor(limit, maxStreams, w)
	// The peer sized its own windows by the RTT it measured; taken as up
	// to a quarter longer, the streams this side opens stay within its
	// bound when the path sits near a step of the window.
	opens := streamsFor(limit, maxStreams, initialWindow(limit, maxStreams, maxWindow, rtt*5/4))
	return &connMemory{limit: limit, window: w, peerStreams: n, opens: min(n, opens), headroom: (n + 1) * w, byMemory: n < maxStreams}
}

// streamsFor is how many streams of the peer's a session allows when each
// starts with window w: one window fewer than fit half of limit, since
// yamux reserves for a stream before it refuses one over the count.
func streamsFor(limit, maxStreams, w int) int {
	return max(1, min(maxStreams, limit/(2*w)-1))
}

// startRate is the rate, in bytes per second, a stream's initial window
// is sized for over a long path: 200 Mbit/s. A stream whose window is
// smaller than what its path holds in flight starts slowly however fast
// its window grows afterwards, and stays slow for seconds: one stream at
// 80 ms and 200 Mbit/s moved 0.68× direct TCP with 256 KiB, 0.84–0.89×
// with 1 MiB, 0.87–0.91× with 2 MiB (the path's bandwidth-delay product)
// and 1.29–1.32× with 4 MiB or 8 MiB, the link's rate. What is in flight
// is more than the product at the minimum RTT: the link's queue fills
// while BBR starts up, so the window covers twice it.
const startRate = 200e6 / 8

// minPathStreams is the fewest streams of the peer's per connection that a
// path's larger initial window may leave: 31, a 4 MiB window at the
// default 256 MiB bound, which covers 200 Mbit/s from 42 ms. More streams
// are carried over more tunnel connections, which a dial side opens as
// they fill.
const minPathStreams = 31

// initialWindow is the window a stream starts with, a power of two from
// yamux's 256 KiB up to maxWindow. It is the largest whose windows for
// maxStreams streams of the peer's (and the one yamux reserves before
// refusing) take at most half of limit, the half that new streams may use:
// a side that allows fewer streams per connection gives each a larger
// start; at the defaults it is yamux's own. Over a path whose RTT is known
// it is larger still, up to twice what the path holds in flight at
// startRate, as long as minPathStreams such windows fit that half: at the
// defaults 256 KiB up to 5 ms, 1 MiB at 20 ms, 2 MiB at 30 ms and 4 MiB
// from 42 ms.
func initialWindow(limit, maxStreams, maxWindow int, rtt time.Duration) int {
	w := yamuxWindow
	for 2*w <= maxWindow && (maxStreams+1)*2*w <= limit/2 {
		w *= 2
	}
	need := int(2 * rtt.Seconds() * startRate)
	for w < need && 2*w <= maxWindow && (minPathStreams+1)*2*w <= limit/2 {
		w *= 2
	}
	return w
}

// span is yamux's per-stream MemoryManager factory.
func (m *connMemory) span() (yamux.MemoryManager, error) { return &streamMemory{m: m}, nil }

// reserveOpen reserves the window of a stream about to be opened by us.
func (m *connMemory) reserveOpen() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.used+m.window > m.limit-m.headroom {
		return false
	}
	m.used += m.window
	m.prepaid++
	return true
}

// reserve reserves size bytes at yamux's priority prio and returns what it
// charged, or false when the bound has no room.
func (m *connMemory) reserve(size int, prio uint8) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if prio == priorityNewStream && size == yamuxWindow {
		// A new stream, charged its whole initial window: ours was paid
		// for by reserveOpen; the peer's are bounded by
		// MaxIncomingStreams and must not fail.
		if m.prepaid > 0 {
			m.prepaid--
		} else {
			m.used += m.window
		}
		return m.window, true
	}
	if m.used+size > m.limit-m.headroom {
		return 0, false
	}
	m.used += size
	return size, true
}

func (m *connMemory) release(size int) {
	m.mu.Lock()
	m.used -= size
	m.mu.Unlock()
}

// inUse is the bytes of receive window granted.
func (m *connMemory) inUse() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.used
}

// streamMemory is one stream's share of its session's connMemory.
type streamMemory struct {
	m    *connMemory
	mu   sync.Mutex
	held int
}

func (s *streamMemory) ReserveMemory(size int, prio uint8) error {
	charged, ok := s.m.reserve(size, prio)
	if !ok {
		return errConnMemory
	}
	s.mu.Lock()
	s.held += charged
	s.mu.Unlock()
	return nil
}

func (s *streamMemory) ReleaseMemory(size int) {
	s.mu.Lock()
	size = min(size, s.held)
	s.held -= size
	s.mu.Unlock()
	s.m.release(size)
}

func (s *streamMemory) Done() {
	s.mu.Lock()
	held := s.held
	s.held = 0
	s.mu.Unlock()
	s.m.release(held)
}

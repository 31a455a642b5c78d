package tlsmux

import (
	"sync"

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
	headroom    int
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
// MaxStreamWindowSize).
func newConnMemory(limit, maxStreams, maxWindow int) *connMemory {
	w := initialWindow(limit, maxStreams, maxWindow)
	// One more window than the peer's streams: yamux reserves for a
	// stream before it refuses one over the count.
	n := max(1, min(maxStreams, limit/(2*w)-1))
	return &connMemory{limit: limit, window: w, peerStreams: n, headroom: (n + 1) * w, byMemory: n < maxStreams}
}

// initialWindow is the window a stream starts with: the largest power of
// two from yamux's 256 KiB up to maxWindow whose windows for maxStreams
// streams of the peer's (and the one yamux reserves before refusing) take
// at most half of limit, the half that new streams may use. A stream whose
// window is smaller than its path's bandwidth-delay product starts slowly
// however fast its window grows afterwards: a sender held by the window
// looks to BBR like a full path, and its start-up ends early (one stream
// at 80 ms and 200 Mbit/s moved 0.6× direct TCP with 256 KiB, 0.9–1.0×
// with 2 MiB). So a side that allows fewer streams per connection gives
// each a larger start; at the defaults it is yamux's own.
func initialWindow(limit, maxStreams, maxWindow int) int {
	w := yamuxWindow
	for 2*w <= maxWindow && (maxStreams+1)*2*w <= limit/2 {
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

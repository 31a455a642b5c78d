package tlsmux

import (
	"sync"

	"github.com/libp2p/go-yamux/v5"

	"github.com/pqtunnel/pqtunnel/transport"
)

// yamuxWindow is the receive window yamux grants every new stream (its
// unexported initialStreamWindow), whichever side opened it.
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
	limit       int
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

func newConnMemory(limit, maxStreams int) *connMemory {
	// One more window than the peer's streams: yamux reserves for a
	// stream before it refuses one over the count.
	n := max(1, min(maxStreams, limit/(2*yamuxWindow)-1))
	return &connMemory{limit: limit, peerStreams: n, headroom: (n + 1) * yamuxWindow, byMemory: n < maxStreams}
}

// span is yamux's per-stream MemoryManager factory.
func (m *connMemory) span() (yamux.MemoryManager, error) { return &streamMemory{m: m}, nil }

// reserveOpen reserves the window of a stream about to be opened by us.
func (m *connMemory) reserveOpen() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.used+yamuxWindow > m.limit-m.headroom {
		return false
	}
	m.used += yamuxWindow
	m.prepaid++
	return true
}

func (m *connMemory) reserve(size int, prio uint8) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if prio == priorityNewStream && size == yamuxWindow {
		// A new stream: ours was paid for by reserveOpen; the peer's are
		// bounded by MaxIncomingStreams and must not fail.
		if m.prepaid > 0 {
			m.prepaid--
		} else {
			m.used += size
		}
		return true
	}
	if m.used+size > m.limit-m.headroom {
		return false
	}
	m.used += size
	return true
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
	if !s.m.reserve(size, prio) {
		return errConnMemory
	}
	s.mu.Lock()
	s.held += size
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

package transport

// StreamBound is how many streams one session carries at once in each
// direction. Neither transport tells a side the bound its peer enforces
// (yamux resets a stream past the peer's count; QUIC makes OpenStream
// wait), so a session reports the bound its own Config gives, which is the
// peer's too when both sides share MaxStreams and MaxConnMemory.
type StreamBound struct {
	// Streams is the bound; zero means the session has none.
	Streams int
	// ByMemory is true when MaxConnMemory, not MaxStreams, sets Streams:
	// over TCP every stream holds a fixed receive window.
	ByMemory bool
	// Opens, when above zero and below Streams, is how many streams of
	// this side's the peer is taken to accept at once: over TCP a side
	// sizes a long path's initial windows, and so its bound, by the RTT it
	// measured, and its peer may have measured a little more.
	Opens int
}

// Outgoing is how many streams of this side's the peer is taken to accept
// at once: Opens where it is lower, Streams otherwise.
func (b StreamBound) Outgoing() int {
	if b.Opens > 0 && b.Opens < b.Streams {
		return b.Opens
	}
	return b.Streams
}

// SessionStreamBound returns the stream bound of s, where the session has
// one: it offers it with a StreamBound() StreamBound method. A session
// that wraps another says so with Unwrap() Session.
func SessionStreamBound(s Session) (StreamBound, bool) {
	for s != nil {
		if b, ok := s.(interface{ StreamBound() StreamBound }); ok {
			return b.StreamBound(), true
		}
		u, ok := s.(interface{ Unwrap() Session })
		if !ok {
			break
		}
		s = u.Unwrap()
	}
	return StreamBound{}, false
}

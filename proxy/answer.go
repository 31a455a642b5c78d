package proxy

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// answerDelay bounds how long a delivered stream's StatusOK waits for the
// origin's first bytes to ride with. Nothing on the opening side waits for
// the answer but the origin's bytes behind it, so the wait delays no byte;
// it only keeps a silent origin's stream from being answered later than a
// peer's response deadline (its dial timeout plus 5 s) allows.
const answerDelay = 100 * time.Millisecond

// maxAnswerRide is the longest first write the answer is copied in front
// of; a longer one (bulk) follows the answer in a frame of its own.
const maxAnswerRide = 16 << 10

// answerFrames holds the buffers an answer and the origin's first bytes
// are joined in.
var answerFrames = sync.Pool{New: func() any { b := make([]byte, 0, 64+maxAnswerRide); return &b }}

// answeringStream is a delivered stream whose StatusOK answer (Answer)
// leaves in the same frame as the first bytes written to it, so that a
// request answered at once costs the peer one frame, one read and one
// wake-up instead of two. The answer leaves alone on CloseWrite or Close,
// which the peer must read it before, or after answerDelay. Writes come
// from one goroutine, as a route.Conn's do; the timer's flush is
// serialised with them. The answer is not payload: a counting stream
// wraps this one.
type answeringStream struct {
	transport.Stream
	// answered is set once no answer waits: Write then goes straight on.
	answered atomic.Bool
	mu       sync.Mutex
	pending  []byte // the answer, while it waits
	timer    *time.Timer
}

// Answer queues resp to leave with the first write, or after answerDelay.
func (a *answeringStream) Answer(resp wire.Response) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pending = wire.AppendResponse(nil, resp)
	a.timer = time.AfterFunc(answerDelay, func() { _ = a.flush() }) // a failed write shows on the copy's next one
}

// flush sends a waiting answer alone.
func (a *answeringStream) flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sendLocked(nil)
}

// sendLocked writes the waiting answer, with p behind it in the same
// write when p is short (at most maxAnswerRide).
func (a *answeringStream) sendLocked(p []byte) error {
	if a.pending == nil {
		return nil
	}
	if a.timer != nil {
		a.timer.Stop()
	}
	resp := a.pending
	a.pending = nil
	a.answered.Store(true)
	if len(p) == 0 || len(p) > maxAnswerRide {
		_, err := a.Stream.Write(resp)
		return err
	}
	bp := answerFrames.Get().(*[]byte)
	defer answerFrames.Put(bp)
	*bp = append(append((*bp)[:0], resp...), p...)
	_, err := a.Stream.Write(*bp) // Write does not keep the buffer
	return err
}

func (a *answeringStream) Write(p []byte) (int, error) {
	if !a.answered.Load() {
		a.mu.Lock()
		if a.pending != nil {
			rides := len(p) <= maxAnswerRide
			err := a.sendLocked(p)
			a.mu.Unlock()
			if err != nil {
				return 0, err
			}
			if rides {
				return len(p), nil
			}
			return a.Stream.Write(p)
		}
		a.mu.Unlock()
	}
	return a.Stream.Write(p)
}

func (a *answeringStream) CloseWrite() error {
	if err := a.flush(); err != nil {
		return err
	}
	return a.Stream.CloseWrite()
}

func (a *answeringStream) Close() error {
	_ = a.flush() // the close says the rest
	return a.Stream.Close()
}

// Reset drops a waiting answer: the peer reads the reset instead. The
// stream is reset first, which ends a write that holds mu.
func (a *answeringStream) Reset() {
	a.Stream.Reset()
	a.drop()
}

// drop forgets a waiting answer and stops its timer.
func (a *answeringStream) drop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.timer != nil {
		a.timer.Stop()
	}
	a.pending = nil
	a.answered.Store(true)
}

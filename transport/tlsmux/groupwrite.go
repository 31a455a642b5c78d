package tlsmux

import (
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
)

// groupWriter is the connection yamux's send loop writes to. yamux queues
// the frames of all streams in one channel, and its loop writes each frame
// it takes with its own TLS record and system call; under many streams that
// is most of what a small request costs. groupWriter holds a frame back
// while more frames are already queued behind it, and writes the whole run
// at once when the queue is empty: one TLS record of up to 16 KiB for many
// streams' frames, and one system call. The loop itself does the write, so
// there is no other goroutine to hand frames to; a frame with nothing
// queued behind it leaves at once, and nothing waits on a timer.
//
// The queue is yamux's own and cannot be looked at, so groupWriter counts:
// the data bytes stream Writes have handed to yamux (counted once the Write
// returns, when its frames are queued) against the data bytes of the frames
// that reached it. The first can only lag, so while it is ahead, frames are
// really queued, and the loop is about to take them.
//
// Memory is bounded: a held run is at most maxGroupBatch bytes, written as
// soon as it is full. It is kept per connection, outside
// PQT_MAX_CONN_MEMORY, which bounds receive windows.
type groupWriter struct {
	net.Conn // the TLS connection
	out      frameSink

	queued atomic.Int64 // data bytes stream Writes handed to yamux

	mu      sync.Mutex // Write is called by the send loop alone; this is for safety
	taken   int64      // data bytes of the frames Write was given
	pending []byte     // frames held back, in order
}

// frameSink writes two buffers, in order, as one write to the socket.
type frameSink interface {
	writeFrames(a, b []byte) error
}

// maxGroupBatch bounds the bytes of frames one write collects (four TLS
// records' worth, what recordConn reads ahead at the other end).
const maxGroupBatch = 64 << 10

// directWriteMin is the frame size from which a frame is not copied into
// the batch but written from yamux's buffer: copying a bulk frame costs
// more than batching saves, and a frame this large fills records by itself.
const directWriteMin = maxGroupBatch / 2

// yamux's frame header: version, type, flags, stream, length (for a data
// frame, the length of the body that follows).
const (
	yamuxHeaderLen = 12
	yamuxTypeData  = 0
)

func newGroupWriter(c net.Conn, out frameSink) *groupWriter {
	return &groupWriter{Conn: c, out: out}
}

// streamWrote records that a stream Write handed n bytes to yamux.
func (w *groupWriter) streamWrote(n int) { w.queued.Add(int64(n)) }

// behindLocked reports whether frames are queued in yamux behind the
// one just taken.
func (w *groupWriter) behindLocked() bool { return w.queued.Load() > w.taken }

// Write takes one frame from yamux's send loop. It returns once p has been
// copied or written: yamux reuses p at once. The error of a failed write is
// the connection's own, unwrapped: yamux tells a write timeout
// (os.IsTimeout) from other failures by it.
func (w *groupWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(p) >= yamuxHeaderLen && p[1] == yamuxTypeData {
		w.taken += int64(binary.BigEndian.Uint32(p[8:yamuxHeaderLen]))
	}
	if len(p) >= directWriteMin {
		err := w.out.writeFrames(w.pending, p)
		w.pending = w.pending[:0]
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if w.pending == nil {
		w.pending = make([]byte, 0, maxGroupBatch)
	}
	if len(w.pending)+len(p) > maxGroupBatch {
		if err := w.flushLocked(); err != nil {
			return 0, err
		}
	}
	w.pending = append(w.pending, p...)
	if w.behindLocked() {
		return len(p), nil
	}
	// Nothing is queued behind this frame yet. Goroutines runnable at this
	// moment (readers woken by the same poll, as under many clients) may
	// be about to queue theirs: let them run first. With nothing else
	// runnable the yield returns at once; it waits for no time and no event.
	w.mu.Unlock()
	runtime.Gosched()
	w.mu.Lock()
	if w.behindLocked() {
		return len(p), nil
	}
	if err := w.flushLocked(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flushLocked writes the held frames.
func (w *groupWriter) flushLocked() error {
	if len(w.pending) == 0 {
		return nil
	}
	err := w.out.writeFrames(w.pending, nil)
	w.pending = w.pending[:0]
	return err
}

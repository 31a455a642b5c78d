package tlsmux

import (
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-yamux/v5"
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
	taken  atomic.Int64 // data bytes of the frames Write was given

	mu      sync.Mutex // Write is called by the send loop alone; this is for safety
	pending []byte     // frames held back, in order

	// longPath is set once the socket's path is long enough for the
	// backlog bound (boundsUnsent); until then waitRoom does not wait.
	longPath atomic.Bool
	roomMu   sync.Mutex
	room     chan struct{} // closed when frames are taken while a stream Write waits (waitRoom)
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
func (w *groupWriter) behindLocked() bool { return w.queued.Load() > w.taken.Load() }

// Write takes one frame from yamux's send loop. It returns once p has been
// copied or written: yamux reuses p at once. The error of a failed write is
// the connection's own, unwrapped: yamux tells a write timeout
// (os.IsTimeout) from other failures by it.
func (w *groupWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(p) >= yamuxHeaderLen && p[1] == yamuxTypeData {
		w.taken.Add(int64(binary.BigEndian.Uint32(p[8:yamuxHeaderLen])))
		w.wakeWaiters()
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

// A tunnel connection's streams share one byte stream, and yamux sends
// frames in the order stream Writes queue them. Left alone, a bulk stream
// queues as much as its window lets it (up to 16 MiB) in yamux's send
// channel, and the tunnel socket holds what the kernel's send buffer takes
// (up to 4 MiB) unsent, and a small request of another stream waits behind
// all of it: 250–490 ms at p50 and 750–870 ms at p99 beside two downloads
// at 20 ms RTT and 200 Mbit/s, against 48 and 54 ms for direct TCP on the
// same link (63 and 112–158 ms with the bounds; README, Performance).
// Over a path of 1 ms RTT or more (boundsUnsent, Linux) two bounds keep
// what is ahead of it near what the path needs in flight: the socket holds
// at most notSentLowWater unsent (TCP_NOTSENT_LOWAT), and a stream Write
// larger than smallWrite is queued in pieces of longPathWrite, each waiting
// while more than maxBacklog bytes of data are queued in yamux ahead of the
// send loop. Over a shorter path what is queued drains within
// milliseconds, and both bounds would only cost a bulk sender CPU (15–45 %
// more per GB on loopback, where the writer and the send loop then take
// turns instead of overlapping).
const (
	notSentLowWater = 128 << 10
	maxBacklog      = 128 << 10
	// longPathWrite is the most of one stream Write that is queued at
	// once while the bounds apply; shorter paths keep whole writes (up to
	// the proxy's 256 KiB), one frame each, for their CPU cost.
	longPathWrite = 64 << 10
	// smallWrite and below never wait: requests, answers and acks are
	// what the bound keeps moving.
	smallWrite = 16 << 10
)

// backlog is the data bytes stream Writes have queued in yamux that its
// send loop has not taken yet.
func (w *groupWriter) backlog() int64 { return w.queued.Load() - w.taken.Load() }

// wakeWaiters lets the stream Writes waiting in waitRoom look again. On a
// short path nobody waits, and the send loop takes no lock per frame.
func (w *groupWriter) wakeWaiters() {
	if !w.longPath.Load() {
		return
	}
	w.roomMu.Lock()
	if w.room != nil {
		close(w.room)
		w.room = nil
	}
	w.roomMu.Unlock()
}

// errWriteTimeout is waitRoom's error at the stream's write deadline.
var errWriteTimeout = yamux.ErrTimeout

// waitRoom returns once the backlog is below maxBacklog, or with
// errWriteTimeout at deadline (zero: none). It also returns, with nil,
// once the stream or its session has ended, so that yamux's Write reports
// why.
func (w *groupWriter) waitRoom(deadline time.Time, streamDone, sessionDone <-chan struct{}) error {
	if !w.longPath.Load() {
		return nil
	}
	var expired <-chan time.Time
	for w.backlog() >= maxBacklog {
		w.roomMu.Lock()
		if w.room == nil {
			w.room = make(chan struct{})
		}
		room := w.room
		w.roomMu.Unlock()
		// Frames taken before the channel was made woke nobody.
		if w.backlog() < maxBacklog {
			return nil
		}
		if !deadline.IsZero() && expired == nil {
			d := time.Until(deadline)
			if d <= 0 {
				return errWriteTimeout
			}
			t := time.NewTimer(d)
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-room:
		case <-streamDone:
			return nil
		case <-sessionDone:
			return nil
		case <-expired:
			return errWriteTimeout
		}
	}
	return nil
}

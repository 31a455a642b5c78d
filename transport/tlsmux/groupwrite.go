package tlsmux

import (
	"io"
	"net"
	"runtime"
	"sync"
)

// groupWriter is the connection yamux's send loop writes to. yamux hands
// its loop one frame at a time and the loop writes each with its own TLS
// record and system call; under many streams that is most of what a small
// request costs. groupWriter lets the loop go on: Write appends the frame to
// a pending batch and returns, while one flusher goroutine writes
// everything pending in one TLS write (one system call, records of up to
// 16 KiB). Frames that arrive while a write is under way wait for it and
// leave together; a frame that arrives on an idle connection leaves at once.
// Nothing waits on a timer.
//
// Memory is bounded whatever the load: a batch holds at most
// maxGroupBatch bytes, and a Write that does not fit waits for the
// flusher, which backs up yamux's send queue and so its streams' writers.
// Two batch buffers are kept per connection (one being filled, one being
// written), outside PQT_MAX_CONN_MEMORY, which bounds receive windows.
type groupWriter struct {
	net.Conn           // the TLS connection
	sock     io.Closer // the socket under it

	mu   sync.Mutex
	cond sync.Cond // on mu: pending or writing changed, or the writer failed or closed
	// pending is the batch being filled; spare the buffer of the last
	// batch written, kept for the next one.
	pending, spare []byte
	// writing is true while a write to the connection is under way, by the
	// flusher or by a Write of a large frame.
	writing bool
	// err is the first write error; every Write after it returns it.
	err    error
	closed bool

	done chan struct{} // closed when the flusher has returned
}

// maxGroupBatch bounds the bytes of frames one batch collects (four TLS
// records' worth, what recordConn reads ahead at the other end).
const maxGroupBatch = 64 << 10

// directWriteMin is the frame size from which a frame is written by the
// caller itself: copying a bulk frame into the batch costs more than the
// batch saves, and a frame this large fills records on its own.
const directWriteMin = maxGroupBatch / 2

// newGroupWriter writes to c, a TLS connection over sock, and starts its
// flusher; Close stops it.
func newGroupWriter(c net.Conn, sock io.Closer) *groupWriter {
	w := &groupWriter{Conn: c, sock: sock, done: make(chan struct{})}
	w.cond.L = &w.mu
	go w.routineFlush()
	return w
}

// usableLocked reports whether a Write may go on: nothing has failed and
// the writer is open.
func (w *groupWriter) usableLocked() bool { return w.err == nil && !w.closed }

// failedLocked is what a Write returns once the writer is unusable. The
// connection's own error is returned unwrapped: yamux tells a write
// timeout (os.IsTimeout) from other failures by it.
func (w *groupWriter) failedLocked() error {
	if w.err != nil {
		return w.err
	}
	return net.ErrClosed
}

// Write queues p for the flusher, or writes it directly when it is large.
// It returns once p has been copied or written: yamux reuses p at once.
func (w *groupWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(p) >= directWriteMin {
		return w.writeDirectLocked(p)
	}
	for len(w.pending) > 0 && len(w.pending)+len(p) > maxGroupBatch && w.usableLocked() {
		w.cond.Wait()
	}
	if !w.usableLocked() {
		return 0, w.failedLocked()
	}
	if w.pending == nil {
		w.pending, w.spare = w.spare, nil
		if w.pending == nil {
			w.pending = make([]byte, 0, maxGroupBatch)
		}
	}
	w.pending = append(w.pending, p...)
	w.cond.Broadcast()
	return len(p), nil
}

// writeDirectLocked writes p from the caller once what is pending has
// left, keeping the frames in order.
func (w *groupWriter) writeDirectLocked(p []byte) (int, error) {
	for (w.writing || len(w.pending) > 0) && w.usableLocked() {
		w.cond.Wait()
	}
	if !w.usableLocked() {
		return 0, w.failedLocked()
	}
	w.writing = true
	w.mu.Unlock()
	n, err := w.Conn.Write(p)
	w.mu.Lock()
	w.wroteLocked(err)
	return n, err
}

// wroteLocked ends a write to the connection. A failed write closes the
// connection, so that yamux's receive loop ends the session even if no
// frame follows to report the error.
func (w *groupWriter) wroteLocked(err error) {
	w.writing = false
	if err != nil && w.err == nil {
		w.err = err
		// The socket, not the TLS connection: no alert can follow a
		// failed write. The write error is what yamux is told.
		_ = w.sock.Close()
	}
	w.cond.Broadcast()
}

// routineFlush writes each pending batch as it forms, until the writer
// fails or closes; what is pending then is dropped, as yamux drops its own
// send queue when the session closes.
func (w *groupWriter) routineFlush() {
	defer close(w.done)
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		idle := false
		for (len(w.pending) == 0 || w.writing) && w.usableLocked() {
			w.cond.Wait()
			idle = true
		}
		if !w.usableLocked() {
			return
		}
		if idle {
			// Woken by the first frame after a pause: let the goroutines
			// that are runnable now (readers woken by the same poll, as
			// under many clients) queue their frames first, so that they
			// leave in this write. With nothing else runnable the yield
			// returns at once; it waits for no time and no event.
			w.mu.Unlock()
			runtime.Gosched()
			w.mu.Lock()
			continue
		}
		batch := w.pending
		w.pending = nil
		w.writing = true
		w.cond.Broadcast() // a Write waiting for room may fill the next batch
		w.mu.Unlock()
		_, err := w.Conn.Write(batch)
		w.mu.Lock()
		w.spare = batch[:0]
		w.wroteLocked(err)
	}
}

// Close closes the connection, which ends a write under way, and waits for
// the flusher to return.
func (w *groupWriter) Close() error {
	w.mu.Lock()
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	err := w.Conn.Close()
	<-w.done
	return err
}

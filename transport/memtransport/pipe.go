package memtransport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// ErrReset is what reads and writes of a stream return once either end
// reset it.
var ErrReset = errors.New("memtransport: stream reset")

// errWriteClosed is what a write returns after CloseWrite or Close.
var errWriteClosed = errors.New("memtransport: write on a closed stream")

// errPeerClosed is what a write returns once the peer stopped reading.
var errPeerClosed = errors.New("memtransport: peer closed the stream")

// pipe is one direction of a stream: bytes written and not yet read, at
// most window of them, so a writer blocks until the reader catches up.
type pipe struct {
	mu     sync.Mutex
	buf    []byte
	window int
	eof    bool  // the writer closed its direction
	rerr   error // reads fail with it once buf is drained
	werr   error // writes fail with it
	// readable and writable each hold a token when there may be news for a
	// blocked reader or writer.
	readable, writable chan struct{}
}

func newPipe(window int) *pipe {
	return &pipe{window: window, readable: make(chan struct{}, 1), writable: make(chan struct{}, 1)}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (p *pipe) read(b []byte, dl *deadline) (int, error) {
	for {
		p.mu.Lock()
		switch {
		case p.rerr != nil && (len(p.buf) == 0 || errors.Is(p.rerr, ErrReset)):
			err := p.rerr
			p.mu.Unlock()
			return 0, err
		case len(p.buf) > 0:
			n := copy(b, p.buf)
			p.buf = p.buf[n:]
			if len(p.buf) == 0 {
				p.buf = nil // let a drained buffer go
			}
			p.mu.Unlock()
			notify(p.writable)
			return n, nil
		case p.eof:
			p.mu.Unlock()
			return 0, io.EOF
		}
		p.mu.Unlock()
		if len(b) == 0 {
			return 0, nil
		}
		if err := dl.wait(p.readable); err != nil {
			return 0, err
		}
	}
}

func (p *pipe) write(b []byte, dl *deadline) (int, error) {
	written := 0
	for written < len(b) {
		p.mu.Lock()
		if p.werr != nil {
			err := p.werr
			p.mu.Unlock()
			return written, err
		}
		room := p.window - len(p.buf)
		if room > 0 {
			k := min(room, len(b)-written)
			p.buf = append(p.buf, b[written:written+k]...)
			written += k
		}
		p.mu.Unlock()
		if room > 0 {
			notify(p.readable)
			continue
		}
		if err := dl.wait(p.writable); err != nil {
			return written, err
		}
	}
	return written, nil
}

// closeWrite ends the direction after what was written.
func (p *pipe) closeWrite() {
	p.mu.Lock()
	p.eof = true
	if p.werr == nil {
		p.werr = errWriteClosed
	}
	p.mu.Unlock()
	notify(p.readable)
}

// stopReading discards what arrived and what will: the writer's next
// write fails with werr.
func (p *pipe) stopReading(rerr, werr error) {
	p.mu.Lock()
	p.buf = nil
	if p.rerr == nil {
		p.rerr = rerr
	}
	if p.werr == nil || errors.Is(werr, ErrReset) {
		p.werr = werr
	}
	p.mu.Unlock()
	notify(p.writable)
	notify(p.readable)
}

// fail ends both sides of the direction with err, discarding what is queued.
func (p *pipe) fail(err error) {
	p.mu.Lock()
	p.buf = nil
	p.rerr, p.werr = err, err
	p.mu.Unlock()
	notify(p.readable)
	notify(p.writable)
}

// deadline is a settable point in time that wakes its waiters when it
// changes, as net.Conn deadlines do.
type deadline struct {
	mu      sync.Mutex
	t       time.Time
	changed chan struct{}
}

func newDeadline() *deadline { return &deadline{changed: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	d.t = t
	close(d.changed)
	d.changed = make(chan struct{})
	d.mu.Unlock()
}

// wait blocks until ch has a token, the deadline passes (an error with
// Timeout() true, as for a net.Conn) or the deadline changes.
func (d *deadline) wait(ch <-chan struct{}) error {
	d.mu.Lock()
	t, changed := d.t, d.changed
	d.mu.Unlock()
	var expired <-chan time.Time
	if !t.IsZero() {
		dur := time.Until(t)
		if dur <= 0 {
			return os.ErrDeadlineExceeded
		}
		timer := time.NewTimer(dur)
		defer timer.Stop()
		expired = timer.C
	}
	select {
	case <-ch:
		return nil
	case <-expired:
		return os.ErrDeadlineExceeded
	case <-changed:
		return nil
	}
}

// end is one side of a stream: it reads in and writes out.
type end struct {
	in, out *pipe
	rdl     *deadline
	wdl     *deadline
	// done runs once when this end is closed or reset; it gives the
	// stream's slot back when this is the accepting end.
	done     func()
	doneOnce sync.Once
}

// newStream returns the two ends of a stream whose directions hold up to
// window bytes each.
func newStream(window int) (a, b *end) {
	ab, ba := newPipe(window), newPipe(window)
	a = &end{in: ba, out: ab, rdl: newDeadline(), wdl: newDeadline()}
	b = &end{in: ab, out: ba, rdl: newDeadline(), wdl: newDeadline()}
	return a, b
}

func (e *end) Read(b []byte) (int, error)  { return e.in.read(b, e.rdl) }
func (e *end) Write(b []byte) (int, error) { return e.out.write(b, e.wdl) }

// CloseWrite sends EOF after the data written; reading goes on.
func (e *end) CloseWrite() error {
	e.out.closeWrite()
	return nil
}

// Close ends both directions gracefully: the peer reads EOF after what was
// written, and its further writes fail.
func (e *end) Close() error {
	e.out.closeWrite()
	e.in.stopReading(net.ErrClosed, errPeerClosed)
	e.finish()
	return nil
}

// Reset aborts both directions at once, on both ends.
func (e *end) Reset() {
	e.out.fail(ErrReset)
	e.in.fail(ErrReset)
	e.finish()
}

// abort ends the stream with err, as when its session goes away.
func (e *end) abort(err error) {
	e.out.fail(err)
	e.in.fail(err)
	e.finish()
}

func (e *end) finish() {
	e.doneOnce.Do(func() {
		if e.done != nil {
			e.done()
		}
	})
}

func (e *end) SetDeadline(t time.Time) error {
	e.rdl.set(t)
	e.wdl.set(t)
	return nil
}

func (e *end) SetReadDeadline(t time.Time) error  { e.rdl.set(t); return nil }
func (e *end) SetWriteDeadline(t time.Time) error { e.wdl.set(t); return nil }

// addr is a memtransport address, "host:port" like an IP one.
type addr string

func (a addr) Network() string { return Name }
func (a addr) String() string  { return string(a) }

// conn is a stream end seen as a net.Conn, for the TLS handshake.
type conn struct {
	*end
	local, remote net.Addr
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

// connPair returns the two ends of a control connection.
func connPair(window int, a, b net.Addr) (*conn, *conn) {
	ea, eb := newStream(window)
	return &conn{end: ea, local: a, remote: b}, &conn{end: eb, local: b, remote: a}
}

func refused(address string) error {
	return fmt.Errorf("dial %s %s: %w", Name, address, errRefused)
}

package proxy

import (
	"io"
	"net"
	"sync"
	"time"
)

// halfConn is one end of a proxied connection: a client or origin TCP
// connection, or a tunnel stream.
type halfConn interface {
	io.Reader
	io.Writer
	CloseWrite() error
	Close() error
	SetDeadline(time.Time) error
}

// tcpEnd adapts a TCP connection: abort sends RST rather than FIN.
type tcpEnd struct{ *net.TCPConn }

func (t tcpEnd) abort() {
	_ = t.SetLinger(0) // RST tells the peer the stream failed
	_ = t.Close()
}

// streamEnd adapts a tunnel stream: abort resets it.
type streamEnd struct{ streamConn }

type streamConn interface {
	halfConn
	Reset()
}

func (s streamEnd) abort() { s.Reset() }

type end interface {
	halfConn
	abort()
}

const copyBufferSize = 32 << 10

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// join copies both ways between a and b until both directions end. A clean
// EOF is passed on as a half-close; an error aborts both ends at once so that
// nothing waits on a dead peer. It returns the bytes copied a→b and b→a.
func join(a, b end) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	abort := func(e error) {
		once.Do(func() {
			firstErr = e
			a.abort()
			b.abort()
		})
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		aToB = proxyCopy(b, a, abort)
	}()
	bToA = proxyCopy(a, b, abort)
	wg.Wait()
	once.Do(func() {
		_ = a.Close() // both directions ended cleanly; close errors change nothing
		_ = b.Close()
	})
	return aToB, bToA, firstErr
}

// proxyCopy copies src to dst; on EOF it half-closes dst, on error it aborts.
func proxyCopy(dst, src end, abort func(error)) int64 {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	// The wrappers hide ReadFrom/WriteTo so the pooled buffer is used.
	n, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
	if err != nil {
		abort(err)
		return n
	}
	if err := dst.CloseWrite(); err != nil {
		abort(err)
	}
	return n
}

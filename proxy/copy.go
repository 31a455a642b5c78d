package proxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// halfConn is one end of a proxied connection: a client or origin socket
// (TCP or Unix), or a tunnel stream.
type halfConn interface {
	io.Reader
	io.Writer
	CloseWrite() error
	Close() error
	SetDeadline(time.Time) error
}

// sockConn is a client or origin socket: *net.TCPConn or *net.UnixConn,
// both of which half-close.
type sockConn interface {
	net.Conn
	CloseWrite() error
	syscall.Conn
}

// sockEnd adapts a client or origin socket: abort sends a TCP RST rather
// than FIN; a Unix socket has no reset, so abort closes it.
type sockEnd struct{ sockConn }

func (s sockEnd) abort() {
	if t, ok := s.sockConn.(*net.TCPConn); ok {
		_ = t.SetLinger(0) // RST tells the peer the stream failed
	}
	_ = s.Close()
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

// An idle connection must not pin a large buffer: each direction waits in a
// small buffer of its own and takes a large one from a pool only while reads
// fill more than the small one, that is, during bulk transfer. A large buffer
// is 256 KiB: each read, tunnel frame and write then moves up to 256 KiB,
// which cut the CPU per byte by about a quarter against 64 KiB. At most
// maxLargeBuffers are out at once (64 MiB); streams past that copy through
// 32 KiB buffers, so many concurrent bulk streams cannot exhaust memory.
const (
	smallBufferSize  = 512
	largeBufferSize  = 256 << 10
	mediumBufferSize = 32 << 10
	maxLargeBuffers  = 256
)

var (
	largeBuffers  = sync.Pool{New: func() any { b := make([]byte, largeBufferSize); return &b }}
	mediumBuffers = sync.Pool{New: func() any { b := make([]byte, mediumBufferSize); return &b }}
	largeOut      atomic.Int64
)

// bulkBuffer lends a buffer for bulk copying: a large one while fewer than
// maxLargeBuffers are out, else a medium one. give returns it.
func bulkBuffer() (buf *[]byte, give func()) {
	if largeOut.Add(1) <= maxLargeBuffers {
		b := largeBuffers.Get().(*[]byte)
		return b, func() { largeBuffers.Put(b); largeOut.Add(-1) }
	}
	largeOut.Add(-1)
	b := mediumBuffers.Get().(*[]byte)
	return b, func() { mediumBuffers.Put(b) }
}

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
	n, err := copyAdaptive(dst, src)
	if err != nil {
		abort(err)
		return n
	}
	if err := dst.CloseWrite(); err != nil {
		abort(err)
	}
	return n
}

// copyAdaptive is io.Copy that reads into a small buffer while the source
// trickles and into a lent bulk buffer while reads overflow the small one.
func copyAdaptive(dst io.Writer, src io.Reader) (int64, error) {
	small := make([]byte, smallBufferSize)
	var give func()
	defer func() {
		if give != nil {
			give()
		}
	}()
	buf := small
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
			if w != n {
				return total, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
		switch {
		case n == len(buf) && give == nil:
			var big *[]byte
			big, give = bulkBuffer()
			buf = *big
		case n <= smallBufferSize && give != nil:
			// What came would have fitted the small buffer: the burst is over.
			give()
			give, buf = nil, small
		}
	}
}

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

// An idle connection must not pin a large buffer: each direction waits in a
// small buffer of its own and takes a large one from the pool only while
// reads keep filling the buffer, that is, during bulk transfer. A large
// buffer is 256 KiB: each read, tunnel frame and write then moves up to
// 256 KiB, which cut the CPU per byte by about a quarter against 64 KiB.
const (
	smallBufferSize = 512
	copyBufferSize  = 256 << 10
)

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
// trickles and into a pooled large one while reads fill the buffer.
func copyAdaptive(dst io.Writer, src io.Reader) (int64, error) {
	small := make([]byte, smallBufferSize)
	var big *[]byte
	defer func() {
		if big != nil {
			copyBuffers.Put(big)
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
		case n == len(buf) && big == nil:
			big = copyBuffers.Get().(*[]byte)
			buf = *big
		case n < len(buf)/2 && big != nil:
			copyBuffers.Put(big)
			big, buf = nil, small
		}
	}
}

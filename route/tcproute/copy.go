package tcproute

import (
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pqtunnel/pqtunnel/route"
)

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

// Join copies both ways between a and b until both directions end. A clean
// EOF is passed on as a half-close; an error aborts both ends at once so that
// nothing waits on a dead peer. With idle positive, both ends are aborted
// with route.ErrIdle once no byte has been read from either for that long.
// It returns the bytes copied a→b and b→a, and the error that aborted them.
// Both ends are closed when it returns.
func Join(a, b route.Conn, idle time.Duration) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	abort := func(e error) {
		once.Do(func() {
			firstErr = e
			a.Abort()
			b.Abort()
		})
	}
	if idle > 0 {
		w := &idleWatch{}
		w.touch()
		a, b = activeEnd{a, w}, activeEnd{b, w}
		stop := w.start(idle, func() { abort(route.ErrIdle) })
		defer stop()
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
func proxyCopy(dst, src route.Conn, abort func(error)) int64 {
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

// idleWatch notes when a stream last moved a byte, for the idle timeout.
type idleWatch struct{ last atomic.Int64 }

func (w *idleWatch) touch() { w.last.Store(time.Now().UnixNano()) }

// start calls fire once no touch has happened for idle, checking only when
// the timeout could have passed (one timer per stream, rearmed for the
// rest of the time), and returns a function that stops the watch.
func (w *idleWatch) start(idle time.Duration, fire func()) (stop func()) {
	var t *time.Timer
	var mu sync.Mutex
	stopped := false
	check := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if left := idle - time.Since(time.Unix(0, w.last.Load())); left > 0 {
			t.Reset(left)
			return
		}
		fire()
	}
	mu.Lock()
	t = time.AfterFunc(idle, check)
	mu.Unlock()
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}

// activeEnd is an end whose reads touch an idleWatch.
type activeEnd struct {
	route.Conn
	w *idleWatch
}

func (a activeEnd) Read(p []byte) (int, error) {
	n, err := a.Conn.Read(p)
	if n > 0 {
		a.w.touch()
	}
	return n, err
}

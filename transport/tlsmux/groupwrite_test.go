package tlsmux

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// gatedConn counts the writes that reach the socket and the TLS records in
// them, and can hold writes until released.
type gatedConn struct {
	net.Conn
	mu      sync.Mutex
	writes  int
	records int
	partial []byte // the start of a record whose end is in a later write
	gate    chan struct{}
}

func (g *gatedConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		<-gate
	}
	g.mu.Lock()
	g.writes++
	g.partial = append(g.partial, p...)
	for len(g.partial) >= 5 {
		n := 5 + (int(g.partial[3])<<8 | int(g.partial[4]))
		if len(g.partial) < n {
			break
		}
		g.records++
		g.partial = g.partial[n:]
	}
	g.mu.Unlock()
	return g.Conn.Write(p)
}

// hold makes writes wait until the returned function is called.
func (g *gatedConn) hold() (release func()) {
	gate := make(chan struct{})
	g.mu.Lock()
	g.gate = gate
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		g.gate = nil
		g.mu.Unlock()
		close(gate)
	}
}

func (g *gatedConn) counts() (writes, records int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.writes, g.records
}

// Small frames of many streams that are ready while a write is under way
// leave together, in one write and one TLS record, not one of each per
// frame as yamux's send loop writes them.
func TestConcurrentSmallFramesShareRecordsAndWrites(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	var gc *gatedConn
	cc.WrapConn = func(c net.Conn) net.Conn { gc = &gatedConn{Conn: c}; return gc }
	client, server := transporttest.SessionPair(t, Transport{}, cc, sc)

	const n = 32
	opened := make([]transport.Stream, n)
	accepted := make([]transport.Stream, n)
	for i := range n {
		opened[i], accepted[i] = transporttest.OpenAccepted(t, client, server, []byte("x"))
	}
	w0, r0 := gc.counts()

	// The first frame's write is held at the socket: every other frame is
	// ready before it completes, as under load.
	release := gc.hold()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, st := range opened {
		wg.Go(func() {
			if _, err := st.Write(fmt.Appendf(nil, "request %03d of a small size", i)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	release()
	close(errs)
	for err := range errs {
		t.Fatalf("write: %v", err)
	}
	for i, st := range accepted {
		want := fmt.Appendf(nil, "request %03d of a small size", i)
		got := make([]byte, len(want))
		if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("stream %d: read %q, %v; want %q", i, got, err, want)
		}
	}
	w1, r1 := gc.counts()
	writes, records := w1-w0, r1-r0
	t.Logf("%d frames: %d writes, %d TLS records", n, writes, records)
	if writes > n/4 || records > n/4 {
		t.Fatalf("%d small frames of as many streams took %d writes and %d TLS records", n, writes, records)
	}
}

// pipePair is a groupWriter over one end of a pipe, and the other end.
func pipePair(t *testing.T) (*groupWriter, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	w := newGroupWriter(a, a)
	t.Cleanup(func() { _ = w.Close(); _ = b.Close() })
	return w, b
}

// Frames small and large arrive in the order written, whichever path they
// took, and a single frame on an idle connection leaves without another
// following it.
func TestGroupWriterKeepsOrder(t *testing.T) {
	w, peer := pipePair(t)
	one := []byte("alone")
	if _, err := w.Write(one); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(one))
	if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, one) {
		t.Fatalf("read %q, %v", got, err)
	}

	var want bytes.Buffer
	sizes := []int{10, directWriteMin, 200, maxGroupBatch - 1, 3, directWriteMin - 1, directWriteMin - 1, directWriteMin - 1, 1}
	done := make(chan error, 1)
	go func() {
		for i, n := range sizes {
			p := bytes.Repeat([]byte{byte('a' + i)}, n)
			want.Write(p)
			if _, err := w.Write(p); err != nil {
				done <- err
				return
			}
			clear(p) // yamux reuses its frame buffer as soon as Write returns
		}
		done <- nil
	}()
	total := 0
	for _, n := range sizes {
		total += n
	}
	got = make([]byte, total)
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("bytes arrived out of order or changed")
	}
}

// A peer that reads nothing holds the writer to one batch: Write blocks
// instead of buffering without bound, and Close releases it.
func TestGroupWriterBoundsPendingAndCloseUnblocks(t *testing.T) {
	w, _ := pipePair(t)
	frame := make([]byte, 1000)
	blocked := make(chan error, 1)
	go func() {
		for {
			if _, err := w.Write(frame); err != nil {
				blocked <- err
				return
			}
		}
	}()
	// The flusher holds one batch in a write the peer never reads; the
	// next batch fills and the writer waits for room.
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		pending, writing := len(w.pending), w.writing
		w.mu.Unlock()
		if pending > maxGroupBatch {
			t.Fatalf("%d bytes pending, more than the %d bound", pending, maxGroupBatch)
		}
		if writing && pending+len(frame) > maxGroupBatch {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch never filled: %d bytes pending, writing %v", pending, writing)
		}
		time.Sleep(time.Millisecond) // polling a state no event announces
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-blocked; !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked Write returned %v after Close, want closed", err)
	}
}

// A write that misses its deadline fails the writer: the socket is
// closed, and the next Write returns the error unwrapped, a timeout as
// yamux tells one (os.IsTimeout).
func TestGroupWriterWriteTimeout(t *testing.T) {
	w, peer := pipePair(t)
	if err := w.SetWriteDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("never read")); err != nil {
		t.Fatalf("first write queued: %v", err)
	}
	var err error
	for err == nil {
		_, err = w.Write([]byte("x"))
	}
	if !os.IsTimeout(err) {
		t.Fatalf("Write after a timed-out write: %v, want a timeout", err)
	}
	if _, rerr := peer.Read(make([]byte, 1)); !errors.Is(rerr, io.EOF) {
		t.Fatalf("peer read %v, want EOF: the failed writer closes the socket", rerr)
	}
}

// Frames of goroutines woken by one poll (proxy readers whose clients
// sent at the same moment) leave in a few writes even on one processor,
// where without the flusher's yield each frame is written before the next
// reader runs. (Under -race the scheduler picks goroutines in a random
// order, which batches by chance; the test tells the yield apart without it.)
func TestFramesOfReadersWokenTogetherShareWrites(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	var gc *gatedConn
	cc.WrapConn = func(c net.Conn) net.Conn { gc = &gatedConn{Conn: c}; return gc }
	client, server := transporttest.SessionPair(t, Transport{}, cc, sc)
	const n = 32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var clients, readers []net.Conn
	opened := make([]transport.Stream, n)
	accepted := make([]transport.Stream, n)
	for i := range n {
		opened[i], accepted[i] = transporttest.OpenAccepted(t, client, server, []byte("x"))
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		r, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		clients, readers = append(clients, c), append(readers, r)
	}
	defer func() {
		for i := range n {
			_ = clients[i].Close()
			_ = readers[i].Close()
		}
	}()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	w0, _ := gc.counts()
	var wg sync.WaitGroup
	for i, r := range readers {
		wg.Go(func() {
			// Like the proxy's copy loop: read the client, write the
			// stream, read the client again.
			b := make([]byte, 16)
			for {
				k, err := r.Read(b)
				if err != nil {
					return
				}
				if _, err := opened[i].Write(b[:k]); err != nil {
					return
				}
			}
		})
	}
	for _, c := range clients {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
	}
	for i, st := range accepted {
		got := make([]byte, 4)
		if _, err := io.ReadFull(st, got); err != nil || string(got) != "ping" {
			t.Fatalf("stream %d: read %q, %v", i, got, err)
		}
	}
	w1, _ := gc.counts()
	for _, r := range readers {
		_ = r.Close()
	}
	wg.Wait()
	t.Logf("%d frames: %d writes", n, w1-w0)
	if w1-w0 > n/4 {
		t.Fatalf("%d frames of readers woken together took %d writes", n, w1-w0)
	}
}

// BenchmarkConcurrentRequests is clients streams of one tunnel connection,
// each sending a small request and waiting for its echo, as Redis clients
// do through a sidecar; writes/req counts the requesting side's socket
// writes.
func BenchmarkConcurrentRequests(b *testing.B) {
	for _, clients := range []int{1, 50} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			cc, sc := transporttest.Configs(b)
			var gc *gatedConn
			cc.WrapConn = func(c net.Conn) net.Conn { gc = &gatedConn{Conn: c}; return gc }
			client, server := transporttest.SessionPair(b, Transport{}, cc, sc)
			opened := make([]transport.Stream, clients)
			var echoes sync.WaitGroup
			for i := range clients {
				var accepted transport.Stream
				opened[i], accepted = transporttest.OpenAccepted(b, client, server, []byte("x"))
				_ = opened[i].SetDeadline(time.Time{})
				_ = accepted.SetDeadline(time.Time{})
				echoes.Go(func() { _, _ = io.Copy(accepted, accepted) })
			}
			var next atomic.Int64
			w0, _ := gc.counts()
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			for _, st := range opened {
				wg.Go(func() {
					req := []byte("*2\r\n$3\r\nGET\r\n$8\r\nkey:0001\r\n")
					resp := make([]byte, len(req))
					for next.Add(1) <= int64(b.N) {
						if _, err := st.Write(req); err != nil {
							b.Error(err)
							return
						}
						if _, err := io.ReadFull(st, resp); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			w1, _ := gc.counts()
			b.ReportMetric(float64(w1-w0)/float64(b.N), "writes/req")
			for _, st := range opened {
				_ = st.CloseWrite()
			}
			echoes.Wait()
		})
	}
}

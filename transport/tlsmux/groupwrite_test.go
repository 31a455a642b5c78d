package tlsmux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
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

// sinkRecorder is a frameSink that keeps each write it is given.
type sinkRecorder struct {
	writes [][]byte
	err    error
}

func (r *sinkRecorder) writeFrames(a, b []byte) error {
	if r.err != nil {
		return r.err
	}
	r.writes = append(r.writes, append(slices.Clone(a), b...))
	return nil
}

// dataFrame is a yamux data frame of stream id carrying body.
func dataFrame(id uint32, body []byte) []byte {
	f := make([]byte, yamuxHeaderLen, yamuxHeaderLen+len(body))
	f[0], f[1] = 0, yamuxTypeData
	binary.BigEndian.PutUint32(f[4:8], id)
	binary.BigEndian.PutUint32(f[8:12], uint32(len(body)))
	return append(f, body...)
}

// A frame with nothing queued behind it leaves at once; frames queued
// behind one another leave together when the last arrives, in order, and
// a run never exceeds one batch; large frames are written from yamux's
// buffer after what was held.
func TestGroupWriterHoldsOnlyWhileFramesQueued(t *testing.T) {
	sink := &sinkRecorder{}
	w := newGroupWriter(nil, sink)
	write := func(f []byte) {
		t.Helper()
		if n, err := w.Write(f); err != nil || n != len(f) {
			t.Fatalf("Write: %d, %v", n, err)
		}
		clear(f) // yamux reuses its frame buffer as soon as Write returns
	}

	alone := dataFrame(1, []byte("alone"))
	want := slices.Clone(alone)
	w.streamWrote(5)
	write(alone)
	if len(sink.writes) != 1 || !bytes.Equal(sink.writes[0], want) {
		t.Fatalf("a lone frame: %d writes", len(sink.writes))
	}

	// Ten streams' Writes have returned: their frames are all queued.
	sink.writes = nil
	var frames [][]byte
	for i := range 10 {
		frames = append(frames, dataFrame(uint32(i), bytes.Repeat([]byte{byte('a' + i)}, 100)))
	}
	w.streamWrote(10 * 100)
	want = bytes.Join(frames, nil)
	for _, f := range frames {
		write(f)
	}
	if len(sink.writes) != 1 || !bytes.Equal(sink.writes[0], want) {
		t.Fatalf("ten queued frames took %d writes, want one with all of them in order", len(sink.writes))
	}

	// More queued than a batch holds: each write is at most one batch.
	sink.writes = nil
	const n, size = 200, 1000
	w.streamWrote(n * size)
	want = nil
	for i := range n {
		f := dataFrame(uint32(i), bytes.Repeat([]byte{byte(i)}, size))
		want = append(want, f...)
		write(f)
	}
	if got := bytes.Join(sink.writes, nil); !bytes.Equal(got, want) {
		t.Fatal("bytes changed or out of order")
	}
	for i, b := range sink.writes {
		if len(b) > maxGroupBatch {
			t.Fatalf("write %d is %d bytes, more than a batch (%d)", i, len(b), maxGroupBatch)
		}
	}
	if len(sink.writes) > n*(size+yamuxHeaderLen)/maxGroupBatch+1 {
		t.Fatalf("%d writes for %d bytes", len(sink.writes), len(want))
	}

	// A large frame follows what is held, in the same write.
	sink.writes = nil
	small, large := dataFrame(1, []byte("held")), dataFrame(2, make([]byte, directWriteMin))
	want = append(slices.Clone(small), large...)
	w.streamWrote(4 + directWriteMin)
	write(small)
	write(large)
	if len(sink.writes) != 1 || !bytes.Equal(sink.writes[0], want) {
		t.Fatalf("held frame and large frame: %d writes", len(sink.writes))
	}
}

// A failed write is returned to yamux unwrapped, a timeout as one
// (os.IsTimeout), so that yamux ends the session with its own error.
func TestGroupWriterReturnsWriteErrors(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w := newGroupWriter(a, pipeSink{a})
	if err := a.SetWriteDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(dataFrame(1, []byte("never read"))); !os.IsTimeout(err) {
		t.Fatalf("Write to a peer that does not read: %v, want a timeout", err)
	}
	sink := &sinkRecorder{err: io.ErrClosedPipe}
	w = newGroupWriter(nil, sink)
	if _, err := w.Write(dataFrame(1, nil)); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Write: %v, want the sink's error", err)
	}
}

// pipeSink writes frames to a net.Conn one after the other.
type pipeSink struct{ net.Conn }

func (p pipeSink) writeFrames(a, b []byte) error {
	for _, f := range [][]byte{a, b} {
		if len(f) > 0 {
			if _, err := p.Write(f); err != nil {
				return err
			}
		}
	}
	return nil
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
			streams := transporttest.EchoedStreams(b, client, server, clients)
			w0, _ := gc.counts()
			b.ReportAllocs()
			b.ResetTimer()
			transporttest.RequestLoad(b, streams, transporttest.RedisGET, b.N)
			b.StopTimer()
			w1, _ := gc.counts()
			b.ReportMetric(float64(w1-w0)/float64(b.N), "writes/req")
		})
	}
}

package tlsmux

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// slowConn writes at about rate bytes a second, as a path slower than the
// streams that fill it does.
type slowConn struct {
	net.Conn
	rate float64
}

func (c slowConn) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := min(len(p)-n, 16<<10)
		m, err := c.Conn.Write(p[n : n+k])
		n += m
		if err != nil {
			return n, err
		}
		time.Sleep(time.Duration(float64(m) / c.rate * float64(time.Second)))
	}
	return n, nil
}

// longPathSessions is a session pair over loopback whose client side
// bounds its backlog as over a long path: loopback is a short one, which a
// real socket's minimum RTT would tell.
func longPathSessions(t *testing.T, cc, sc *transport.Config) (client, server transport.Session) {
	t.Helper()
	client, server = transporttest.SessionPair(t, Transport{}, cc, sc)
	client.(*tcpSession).gw.longPath.Store(true)
	return client, server
}

// A stream opened while another pushes bulk into a slower path reaches the
// peer after at most the backlog's bound of that bulk, not after all the
// bulk stream's window lets it queue (16 MiB here): what a small request
// waits behind is counted in bytes of the bulk stream that reach the peer
// between the new stream's open and its first byte.
func TestSmallStreamDoesNotQueueBehindABulkStream(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	cc.MaxStreams, sc.MaxStreams = 2, 2 // 16 MiB initial windows: room to queue
	cc.WrapConn = func(c net.Conn) net.Conn { return slowConn{c, 20e6} }
	client, server := longPathSessions(t, cc, sc)
	ctx := transporttest.Ctx(t)

	bulk, err := client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer bulk.Reset()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		chunk := make([]byte, 256<<10)
		for {
			if _, err := bulk.Write(chunk); err != nil {
				return // reset at the end of the test
			}
		}
	})
	got, err := server.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Reset()
	var received atomic.Int64
	wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := got.Read(buf)
			received.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	for received.Load() < 4<<20 { // the bulk stream fills the path
		time.Sleep(10 * time.Millisecond)
		if ctx.Err() != nil {
			t.Fatal("the bulk stream did not start")
		}
	}

	before := received.Load()
	small, err := client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer small.Reset()
	if _, err := small.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	peer, err := server.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Reset()
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(peer, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	ahead := received.Load() - before
	// The backlog, the piece queued on top of it, the batch the send loop
	// is writing and the records in the slow writer's hands.
	const bound = maxBacklog + longPathWrite + 2*maxGroupBatch
	t.Logf("%d KiB of the bulk stream reached the peer between the small stream's open and its first byte", ahead>>10)
	if ahead > bound {
		t.Errorf("the small stream waited behind %d KiB of bulk, want at most %d", ahead>>10, bound>>10)
	}
}

// A large write waiting for room in a full backlog goes on once frames are
// taken, and gives up at its write deadline or when its stream or session
// ends, so that no write hangs on a backlog that does not drain.
func TestWaitForRoomEnds(t *testing.T) {
	full := func() *groupWriter {
		w := &groupWriter{}
		w.longPath.Store(true)
		w.queued.Store(maxBacklog)
		return w
	}
	returned := func(name string, w *groupWriter, deadline time.Time, stream, session <-chan struct{}, act func(), want error) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- w.waitRoom(deadline, stream, session) }()
		time.Sleep(20 * time.Millisecond) // it waits
		act()
		select {
		case err := <-done:
			if err != want {
				t.Errorf("%s: waitRoom returned %v, want %v", name, err, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: waitRoom did not return", name)
		}
	}
	w := full()
	returned("frames taken", w, time.Time{}, nil, nil, func() {
		w.taken.Add(64 << 10)
		w.wakeWaiters()
	}, nil)
	returned("deadline", full(), time.Now().Add(50*time.Millisecond), nil, nil, func() {}, errWriteTimeout)
	stream := make(chan struct{})
	returned("stream ended", full(), time.Time{}, stream, nil, func() { close(stream) }, nil)
	session := make(chan struct{})
	returned("session ended", full(), time.Time{}, nil, session, func() { close(session) }, nil)
	if err := full().waitRoom(time.Now().Add(-time.Second), nil, nil); err != errWriteTimeout {
		t.Errorf("past deadline: %v, want errWriteTimeout", err)
	}
}

// Over a short path the backlog bound is off: a large write does not wait.
func TestWaitForRoomIsOffOnShortPaths(t *testing.T) {
	w := &groupWriter{}
	w.queued.Store(4 * maxBacklog)
	if err := w.waitRoom(time.Now().Add(-time.Second), nil, nil); err != nil {
		t.Errorf("waitRoom on a short path: %v, want nil at once", err)
	}
}

// On a long path a large Write goes to yamux in pieces, and still returns
// the whole length and delivers every byte in order.
func TestLongPathWriteDeliversEveryPiece(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	client, server := longPathSessions(t, cc, sc)
	ctx := transporttest.Ctx(t)
	st, err := client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Reset()
	want := make([]byte, 3*longPathWrite+1234)
	for i := range want {
		want[i] = byte(i * 7)
	}
	errs := make(chan error, 1)
	go func() {
		n, err := st.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		errs <- err
	}()
	peer, err := server.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Reset()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatalf("Write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Error("the peer read other bytes than were written")
	}
	if w := client.(*tcpSession).gw; w.queued.Load() != int64(len(want)) {
		t.Errorf("the backlog counted %d bytes queued, want %d", w.queued.Load(), len(want))
	}
}

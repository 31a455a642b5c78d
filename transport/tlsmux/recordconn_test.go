package tlsmux

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// writeCounter counts the writes that reach the socket.
type writeCounter struct {
	net.Conn
	mu     sync.Mutex
	writes int
	bytes  int
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes++
	w.bytes += len(p)
	w.mu.Unlock()
	return w.Conn.Write(p)
}

func (w *writeCounter) counts() (writes, bytes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes, w.bytes
}

// A bulk transfer over the TCP transport leaves in writes of whole yamux
// frames, several TLS records each, not one write per 16 KiB record.
func TestTCPBulkWritesBatchRecords(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	var wc *writeCounter
	cc.WrapConn = func(c net.Conn) net.Conn { wc = &writeCounter{Conn: c}; return wc }
	client, server := transporttest.SessionPair(t, Transport{}, cc, sc)
	opened, accepted := transporttest.OpenAccepted(t, client, server, []byte("x"))
	w0, b0 := wc.counts()

	const size = 8 << 20
	data := testutil.RandomBytes(t, size)
	errc := make(chan error, 1)
	go func() {
		_, err := opened.Write(data)
		if err == nil {
			err = opened.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(accepted)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("received %d bytes, not the %d sent", len(got), size)
	}
	w1, b1 := wc.counts()
	writes, sent := w1-w0, b1-b0
	if sent < size {
		t.Fatalf("socket saw %d bytes for %d of payload", sent, size)
	}
	// One write per TLS record would average under 16 KiB; one per frame, far more.
	if avg := sent / writes; avg < 48<<10 {
		t.Fatalf("%d writes of %d bytes on average for %d bytes: records are not batched", writes, avg, size)
	}
}

func TestRecordConnReadsAhead(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	rc := newRecordConn(b)
	defer rc.Close()
	go func() { _, _ = a.Write([]byte("hello world")) }()
	p := make([]byte, 5)
	if _, err := io.ReadFull(rc, p); err != nil || string(p) != "hello" {
		t.Fatalf("first read %q, %v", p, err)
	}
	// The first read took all the peer had written, not just five bytes.
	if n := rc.r.Buffered(); n != 6 {
		t.Fatalf("%d bytes read ahead, want the 6 left of the write", n)
	}
	rest := make([]byte, 6)
	if _, err := io.ReadFull(rc, rest); err != nil || string(rest) != " world" {
		t.Fatalf("second read %q, %v", rest, err)
	}
}

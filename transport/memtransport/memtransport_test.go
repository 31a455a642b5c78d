package memtransport_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// A writer blocks once the receiver's window is full, and a write
// deadline ends the wait with a timeout, as on a socket.
func TestWindowBlocksWriter(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	sc.StreamWindow = 1024
	client, server := transporttest.SessionPair(t, memtransport.New(), cc, sc)
	a, b := transporttest.OpenAccepted(t, client, server, []byte("x"))
	_ = a.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	n, err := a.Write(make([]byte, 4096))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past the window = %d, %v; want a timeout", n, err)
	}
	if n != 1024 {
		t.Errorf("wrote %d bytes before blocking, want the 1024-byte window", n)
	}
	_ = a.SetWriteDeadline(time.Time{})
	go func() {
		_, _ = a.Write(make([]byte, 3072))
		_ = a.CloseWrite()
	}()
	got, err := io.ReadAll(b)
	if err != nil || len(got) != 4096 {
		t.Fatalf("reader got %d bytes, %v; want all 4096", len(got), err)
	}
}

// OpenStream blocks at the peer's MaxStreams until a stream ends.
func TestMaxStreamsBlocksOpen(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	sc.MaxStreams = 2
	client, server := transporttest.SessionPair(t, memtransport.New(), cc, sc)
	_, b1 := transporttest.OpenAccepted(t, client, server, []byte("1"))
	transporttest.OpenAccepted(t, client, server, []byte("2"))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if st, err := client.OpenStream(ctx); !errors.Is(err, context.DeadlineExceeded) {
		if st != nil {
			st.Reset()
		}
		t.Fatalf("OpenStream past MaxStreams = %v, want it to block until the deadline", err)
	}
	_ = b1.Close()
	st, err := client.OpenStream(transporttest.Ctx(t))
	if err != nil {
		t.Fatalf("OpenStream after a stream ended: %v", err)
	}
	st.Reset()
}

func TestDialNobodyIsRefused(t *testing.T) {
	cc, _ := transporttest.Configs(t)
	if _, err := memtransport.New().Dial(transporttest.Ctx(t), "127.0.0.1:7", cc); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Dial to nobody = %v, want connection refused", err)
	}
}

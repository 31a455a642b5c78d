package proxy

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// stoppedStream is a stream whose peer wrote resp and then stopped
// reading: every write fails with errStopped. Reads may be held until
// release is closed, to order them after a write.
type stoppedStream struct {
	transport.Stream
	resp    *bytes.Reader
	release chan struct{}
}

var errStopped = errors.New("peer stopped reading the stream")

func newStoppedStream(t *testing.T, resp wire.Response) *stoppedStream {
	t.Helper()
	return &stoppedStream{resp: bytes.NewReader(wire.AppendResponse(nil, resp))}
}

func (s *stoppedStream) Read(p []byte) (int, error) {
	if s.release != nil {
		<-s.release
	}
	return s.resp.Read(p)
}
func (s *stoppedStream) Write([]byte) (int, error)       { return 0, errStopped }
func (s *stoppedStream) SetReadDeadline(time.Time) error { return nil }

// TestAWriteThatRacesARefusalReturnsTheRefusal checks that a write failing
// because the peer refused the stream and stopped reading it returns the
// peer's refusal, whether no read has begun (the writer reads the
// response itself) or a read of it is under way (the writer waits for
// it), and that a write failing on an accepted stream keeps its own error.
func TestAWriteThatRacesARefusalReturnsTheRefusal(t *testing.T) {
	refusal := wire.Response{Status: wire.StatusUnknownRoute, Message: "the peer's Target has no route \"nope\""}
	t.Run("no read yet", func(t *testing.T) {
		o := &openedStream{Stream: newStoppedStream(t, refusal), timeout: time.Second}
		_, err := o.Write([]byte("hello?\n"))
		var refused *refusedError
		if !errors.As(err, &refused) || refused.resp != refusal {
			t.Fatalf("write: %v; want the refusal %+v", err, refusal)
		}
		if _, err := o.Read(make([]byte, 1)); !errors.As(err, &refused) {
			t.Fatalf("read after the write: %v; want the refusal", err)
		}
	})
	t.Run("read under way", func(t *testing.T) {
		s := newStoppedStream(t, refusal)
		s.release = make(chan struct{})
		o := &openedStream{Stream: s, timeout: time.Second}
		var wg sync.WaitGroup
		var readErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, readErr = o.Read(make([]byte, 1))
		}()
		time.AfterFunc(50*time.Millisecond, func() { close(s.release) })
		_, err := o.Write([]byte("hello?\n"))
		wg.Wait()
		var refused *refusedError
		if !errors.As(err, &refused) {
			t.Errorf("write: %v; want the refusal", err)
		}
		if !errors.As(readErr, &refused) {
			t.Errorf("read: %v; want the refusal", readErr)
		}
	})
	t.Run("accepted", func(t *testing.T) {
		o := &openedStream{Stream: newStoppedStream(t, wire.Response{Status: wire.StatusOK}), timeout: time.Second}
		if _, err := o.Write([]byte("hello?\n")); !errors.Is(err, errStopped) {
			t.Fatalf("write on an accepted stream: %v; want its own error", err)
		}
		if _, err := o.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("read on an accepted stream past its response: %v; want EOF", err)
		}
	})
}

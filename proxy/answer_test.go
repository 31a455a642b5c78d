package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// writeLog records, in order, what a listen side wrote on the streams it
// accepted, one entry per Write: the frames the peer receives.
type writeLog struct {
	mu     sync.Mutex
	writes [][]byte
	at     []time.Time
}

func (w *writeLog) add(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, bytes.Clone(p))
	w.at = append(w.at, time.Now())
}

// first is the first write and when it was made, once there is one.
func (w *writeLog) first() ([]byte, time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.writes) == 0 {
		return nil, time.Time{}, false
	}
	return w.writes[0], w.at[0], true
}

func (w *writeLog) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes, w.at = nil, nil
}

// loggingTransport is a transport whose accepted sessions' accepted
// streams log their writes.
type loggingTransport struct {
	transport.Transport
	log *writeLog
}

func (l loggingTransport) Listen(addr string, c *transport.Config) (transport.Listener, error) {
	ln, err := l.Transport.Listen(addr, c)
	return loggingListener{ln, l.log}, err
}

type loggingListener struct {
	transport.Listener
	log *writeLog
}

func (l loggingListener) Accept(ctx context.Context) (transport.Session, error) {
	s, err := l.Listener.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return loggingSession{s, l.log}, nil
}

type loggingSession struct {
	transport.Session
	log *writeLog
}

func (s loggingSession) AcceptStream(ctx context.Context) (transport.Stream, error) {
	st, err := s.Session.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return loggingStream{st, s.log}, nil
}

type loggingStream struct {
	transport.Stream
	log *writeLog
}

func (s loggingStream) Write(p []byte) (int, error) {
	s.log.add(p)
	return s.Stream.Write(p)
}

// A delivered stream's StatusOK leaves in the same write, and so the same
// frame, as the origin's first bytes; alone when the origin ends without
// a word (the client then reads a clean end, not a failure), and
// alone within answerDelay when the origin stays silent, the client still
// carried.
func TestAnswerRidesWithTheOriginsFirstBytes(t *testing.T) {
	mem := memtransport.New()
	log := &writeLog{}
	silentGot := make(chan []byte, 1)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = silent.Close() })
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 64)
				n, _ := c.Read(b)
				silentGot <- b[:n]
				_, _ = io.Copy(io.Discard, c) // says nothing until the client leaves
			}()
		}
	}()
	closing, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closing.Close() })
	go func() {
		for {
			c, err := closing.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(io.Discard, c) // reads the client out, answers nothing
			}()
		}
	}()

	listenStore, dialStore := pinned.Stores(t, wire.ALPN)
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: loggingTransport{mem, log},
		Target: []Route{{Name: "echo", Addr: testutil.EchoOrigin(t)}, {Name: "silent", Addr: silent.Addr().String()}, {Name: "closing", Addr: closing.Addr().String()}},
		TLS:    listenStore,
	})
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: mem, Connections: 1,
		Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}, {Name: "silent", Addr: "127.0.0.1:0"}, {Name: "closing", Addr: "127.0.0.1:0"}},
		TLS:     dialStore,
	})
	waitTunnels(t, dial)
	ok := wire.AppendResponse(nil, wire.Response{Status: wire.StatusOK})
	addrs := dial.ForwardAddrs()

	t.Run("origin answers", func(t *testing.T) {
		log.reset()
		if err := echoThrough(addrs[0].String(), []byte("PING\r\n")); err != nil {
			t.Fatal(err)
		}
		first, _, _ := log.first()
		if want := append(bytes.Clone(ok), "PING\r\n"...); !bytes.Equal(first, want) {
			t.Fatalf("the listen side's first write on the stream is %q, want the answer and the origin's bytes in one: %q", first, want)
		}
	})

	t.Run("origin ends without a word", func(t *testing.T) {
		log.reset()
		got, err := roundTrip(addrs[2].String(), []byte("hello"))
		if err != nil || len(got) != 0 {
			t.Fatalf("client read %q, %v; want a clean end", got, err)
		}
		if first, _, _ := log.first(); !bytes.Equal(first, ok) {
			t.Fatalf("first write %q, want the answer alone before the end", first)
		}
	})

	t.Run("origin stays silent", func(t *testing.T) {
		log.reset()
		c, err := net.Dial("tcp", addrs[1].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		if _, err := c.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		select {
		case b := <-silentGot:
			if string(b) != "hi" {
				t.Fatalf("origin got %q", b)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the silent origin never got the client's bytes")
		}
		var first []byte
		var at time.Time
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			var ok bool
			if first, at, ok = log.first(); ok || time.Now().After(deadline) {
				break
			}
		}
		if !bytes.Equal(first, ok) {
			t.Fatalf("first write %q, want the answer alone", first)
		}
		if took := at.Sub(start); took < answerDelay/2 || took > answerDelay+time.Second {
			t.Errorf("the answer left %s after the client's bytes, want about %s", took, answerDelay)
		}
		// The client is still carried: nothing has ended it.
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err = c.Read(make([]byte, 1))
		if ne, isNet := errors.AsType[net.Error](err); !isNet || !ne.Timeout() {
			t.Fatalf("client read %v while the origin is silent, want a timeout", err)
		}
	})
}

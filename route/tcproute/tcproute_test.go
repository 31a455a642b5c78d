package tcproute

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/route"
	"github.com/pqtunnel/pqtunnel/wire"
)

// fakeLocal opens stream, or fails with err, and runs the copy at once.
type fakeLocal struct {
	stream route.Conn
	err    error
	first  []byte
	copied chan error
}

var _ route.Local = (*fakeLocal)(nil)

func (l *fakeLocal) Open(appendFirst func([]byte) ([]byte, error)) (route.Conn, error) {
	if l.err != nil {
		return nil, l.err
	}
	if appendFirst != nil {
		var err error
		if l.first, err = appendFirst([]byte("preamble")); err != nil {
			return nil, err
		}
	}
	return l.stream, nil
}

func (l *fakeLocal) IdleTimeout() time.Duration { return 0 }

func (l *fakeLocal) Carry(copy route.Copy) {
	go func() { _, _, err := copy(); l.copied <- err }()
}

// fakeFar dials origin (or fails with dialErr) and answers (or fails with
// acceptErr), noting what Handle asked.
type fakeFar struct {
	origin             route.Conn
	dialErr, acceptErr error
	accepted, carried  bool
}

var _ route.Far = (*fakeFar)(nil)

func (f *fakeFar) Request() wire.Request { return wire.Request{} }

func (f *fakeFar) Dial() (route.Conn, error) {
	if f.dialErr != nil {
		return nil, f.dialErr
	}
	return f.origin, nil
}

func (f *fakeFar) Accept() error {
	f.accepted = true
	return f.acceptErr
}

func (f *fakeFar) IdleTimeout() time.Duration { return 0 }

func (f *fakeFar) Carry(route.Copy) { f.carried = true }

// Forward sends what a plain client said already with the preamble, then
// copies the rest in order; a failed Open carries nothing.
func TestForwardSendsEarlyBytesThenCopies(t *testing.T) {
	client, accepted := testutil.TCPPair(t)
	stream, far := testutil.TCPPair(t)
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // loopback delivers within microseconds
	l := &fakeLocal{stream: tcpEnd{stream}, copied: make(chan error, 1)}
	Kind{}.Forward(tcpEnd{accepted}, l)
	early, ok := strings.CutPrefix(string(l.first), "preamble")
	if !ok || !strings.HasPrefix("hello", early) {
		t.Fatalf("first frame %q, want the preamble and what the client sent so far", l.first)
	}
	if _, err := client.Write([]byte(" world")); err != nil {
		t.Fatal(err)
	}
	_ = client.CloseWrite()
	got, err := io.ReadAll(far)
	if err != nil || early+string(got) != "hello world" {
		t.Errorf("the stream read %q after %q, %v; want the rest in order, then EOF", got, early, err)
	}
	_ = far.CloseWrite()
	if err := <-l.copied; err != nil {
		t.Errorf("copy ended with %v, want a clean end", err)
	}

	failing := &fakeLocal{err: errors.New("no stream"), copied: make(chan error, 1)}
	c2, a2 := testutil.TCPPair(t)
	defer c2.Close()
	Kind{}.Forward(tcpEnd{a2}, failing)
	select {
	case <-failing.copied:
		t.Error("a client whose stream did not open was carried")
	default:
	}
}

// wrapped is a client that is not a plain socket, as a TLS connection
// terminated over one is not.
type wrapped struct{ route.Conn }

// A client that is not a plain socket sends nothing early: its socket's
// bytes are not the client's own.
func TestForwardReadsNothingEarlyPastWrapping(t *testing.T) {
	client, accepted := testutil.TCPPair(t)
	stream, _ := testutil.TCPPair(t)
	defer client.Close()
	l := &fakeLocal{stream: tcpEnd{stream}, copied: make(chan error, 1)}
	Kind{}.Forward(wrapped{tcpEnd{accepted}}, l)
	if l.first != nil {
		t.Errorf("first frame %q for a wrapped client, want nothing appended", l.first)
	}
	_ = client.Close()
	_ = stream.Close()
	<-l.copied
}

// Handle answers only after the origin is dialled, carries only what it
// answered, and closes the origin when the answer fails.
func TestHandleAnswersAfterTheDial(t *testing.T) {
	st, _ := testutil.TCPPair(t)

	f := &fakeFar{dialErr: errors.New("origin refused")}
	Kind{}.Handle(tcpEnd{st}, f)
	if f.accepted || f.carried {
		t.Errorf("after a failed dial: accepted %t, carried %t; want neither", f.accepted, f.carried)
	}

	origin, originPeer := testutil.TCPPair(t)
	f = &fakeFar{origin: tcpEnd{origin}, acceptErr: errors.New("stream gone")}
	Kind{}.Handle(tcpEnd{st}, f)
	if f.carried {
		t.Error("a stream whose answer failed was carried")
	}
	_ = originPeer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := originPeer.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("the origin after a failed answer reads %v, want EOF: closed", err)
	}

	origin, _ = testutil.TCPPair(t)
	f = &fakeFar{origin: tcpEnd{origin}}
	Kind{}.Handle(tcpEnd{st}, f)
	if !f.accepted || !f.carried {
		t.Errorf("accepted %t, carried %t; want both", f.accepted, f.carried)
	}
}

package tcproute

import (
	"bytes"
	"errors"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/route"
)

// tcpEnd is a TCP socket as Join takes it: Abort sends a reset.
type tcpEnd struct{ *net.TCPConn }

func (c tcpEnd) Abort() {
	_ = c.SetLinger(0)
	_ = c.Close()
}

type joinResult struct {
	aToB, bToA int64
	err        error
}

// startJoin wires client <-> (proxyA, proxyB) <-> origin and runs join on the middle.
func startJoin(t *testing.T) (client, origin *net.TCPConn, done <-chan joinResult) {
	t.Helper()
	client, proxyA := testutil.TCPPair(t)
	proxyB, origin := testutil.TCPPair(t)
	ch := make(chan joinResult, 1)
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		var r joinResult
		r.aToB, r.bToA, r.err = Join(tcpEnd{proxyA}, tcpEnd{proxyB}, 0)
		ch <- r
	}()
	t.Cleanup(func() {
		// join must have returned before the test ends, or it leaks.
		_ = client.Close()
		_ = origin.Close()
		<-returned
	})
	return client, origin, ch
}

func waitJoin(t *testing.T, done <-chan joinResult) joinResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("join did not return")
		return joinResult{}
	}
}

func TestJoinCopiesBothWaysByteExact(t *testing.T) {
	client, origin, done := startJoin(t)
	up := testutil.RandomBytes(t, 3<<20+17)
	down := testutil.RandomBytes(t, 2<<20+5)

	errs := make(chan error, 2)
	go func() { // client writes everything, then half-closes
		_, err := client.Write(up)
		if err == nil {
			err = client.CloseWrite()
		}
		errs <- err
	}()
	go func() { // origin answers concurrently, then half-closes
		_, err := origin.Write(down)
		if err == nil {
			err = origin.CloseWrite()
		}
		errs <- err
	}()
	gotUp := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(origin)
		gotUp <- b
	}()
	gotDown, err := io.ReadAll(client)
	if err != nil {
		t.Fatalf("client read: %v", err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	if !bytes.Equal(<-gotUp, up) {
		t.Error("origin did not receive the client's bytes exactly")
	}
	if !bytes.Equal(gotDown, down) {
		t.Error("client did not receive the origin's bytes exactly")
	}
	r := waitJoin(t, done)
	if r.err != nil {
		t.Errorf("join error = %v after a clean close", r.err)
	}
	if r.aToB != int64(len(up)) || r.bToA != int64(len(down)) {
		t.Errorf("join counted %d up, %d down; want %d, %d", r.aToB, r.bToA, len(up), len(down))
	}
}

func TestJoinHalfClosePropagates(t *testing.T) {
	for _, dir := range []string{"client closes first", "origin closes first"} {
		t.Run(dir, func(t *testing.T) {
			client, origin, done := startJoin(t)
			closer, other := client, origin
			if dir == "origin closes first" {
				closer, other = origin, client
			}
			if _, err := closer.Write([]byte("request")); err != nil {
				t.Fatal(err)
			}
			if err := closer.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(other) // ends only at the propagated FIN
			if err != nil || string(got) != "request" {
				t.Fatalf("other end read %q, %v; want request then EOF", got, err)
			}
			// The reverse direction keeps flowing after the half-close.
			reply := testutil.RandomBytes(t, 1<<20)
			go func() {
				_, _ = other.Write(reply)
				_ = other.CloseWrite()
			}()
			back, err := io.ReadAll(closer)
			if err != nil {
				t.Fatalf("read of the reverse direction: %v", err)
			}
			if !bytes.Equal(back, reply) {
				t.Fatalf("reverse direction carried %d bytes, want %d exactly", len(back), len(reply))
			}
			if r := waitJoin(t, done); r.err != nil {
				t.Errorf("join error = %v", r.err)
			}
		})
	}
}

func TestJoinAbortPropagatesPromptly(t *testing.T) {
	for _, dir := range []string{"client resets", "origin resets"} {
		t.Run(dir, func(t *testing.T) {
			client, origin, done := startJoin(t)
			resetter, other := client, origin
			if dir == "origin resets" {
				resetter, other = origin, client
			}
			// Traffic flows first, so both copy loops are running.
			if _, err := resetter.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(other, buf); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			tcpEnd{resetter}.Abort() // SO_LINGER 0: RST
			r := waitJoin(t, done)
			if r.err == nil {
				t.Error("join returned no error after a reset")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("join took %v to notice the reset", d)
			}
			// The other end is aborted too: it must not see a clean EOF.
			_ = other.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := other.Read(buf)
			if err == nil || errors.Is(err, io.EOF) {
				t.Errorf("other end read %d bytes, %v after the reset; want a reset error", n, err)
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("other end was not told of the reset: %v", err)
			}
		})
	}
}

func TestAppendEarlyTakesWhatTheClientSent(t *testing.T) {
	client, server := testutil.TCPPair(t)
	hdr := []byte("preamble")

	got, err := appendEarly(server, slices.Clone(hdr))
	if err != nil || string(got) != "preamble" {
		t.Fatalf("nothing sent yet: appendEarly = %q, %v; want the preamble alone", got, err)
	}

	if _, err := client.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for string(got) == "preamble" && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // loopback delivers within microseconds
		if got, err = appendEarly(server, slices.Clone(hdr)); err != nil {
			t.Fatal(err)
		}
	}
	if want := "preambleGET / HTTP/1.1\r\n\r\n"; string(got) != want {
		t.Fatalf("appendEarly = %q, want %q", got, want)
	}

	big := bytes.Repeat([]byte{'x'}, 3*route.FirstDataSize)
	if _, err := client.Write(big); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	got, err = appendEarly(server, nil)
	if err != nil || len(got) == 0 || len(got) > route.FirstDataSize {
		t.Fatalf("appendEarly took %d bytes (%v); want 1..%d", len(got), err, route.FirstDataSize)
	}
	// The rest is left for the copy, in order.
	rest := make([]byte, len(big)-len(got))
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(server, rest); err != nil || !bytes.Equal(append(got, rest...), big) {
		t.Fatalf("the bytes after the early ones did not follow in order: %v", err)
	}

	// A FIN alone adds nothing and is still there for the copy to read.
	_ = client.CloseWrite()
	time.Sleep(20 * time.Millisecond)
	if got, err = appendEarly(server, nil); err != nil || len(got) != 0 {
		t.Fatalf("after FIN: appendEarly = %q, %v", got, err)
	}
	if n, err := server.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after appendEarly the copy reads %d, %v; want EOF", n, err)
	}
}

// scriptedReader returns, call by call, the sizes in script and records the
// buffer size each call was given.
type scriptedReader struct {
	script []int
	seen   []int
}

func (r *scriptedReader) Read(p []byte) (int, error) {
	r.seen = append(r.seen, len(p))
	if len(r.script) == 0 {
		return 0, io.EOF
	}
	n := min(r.script[0], len(p))
	r.script = r.script[1:]
	return n, nil
}

func TestCopyAdaptiveLendsABulkBufferOnlyDuringABurst(t *testing.T) {
	r := &scriptedReader{script: []int{smallBufferSize, 100 << 10, 2000, 10, 7}}
	n, err := copyAdaptive(io.Discard, r)
	if err != nil || n != smallBufferSize+100<<10+2000+10+7 {
		t.Fatalf("copyAdaptive = %d, %v", n, err)
	}
	// Small until a read fills it; large while reads overflow the small
	// buffer; small again once a read would have fitted it.
	want := []int{smallBufferSize, largeBufferSize, largeBufferSize, largeBufferSize, smallBufferSize, smallBufferSize}
	if !slices.Equal(r.seen, want) {
		t.Fatalf("buffer sizes offered = %v, want %v", r.seen, want)
	}
	if out := largeOut.Load(); out != 0 {
		t.Fatalf("%d large buffers still lent after the copy", out)
	}
}

func TestBulkBuffersAreBounded(t *testing.T) {
	var gives []func()
	for range maxLargeBuffers {
		b, give := bulkBuffer()
		if len(*b) != largeBufferSize {
			t.Fatalf("buffer %d of the first %d is %d bytes, want large", len(gives), maxLargeBuffers, len(*b))
		}
		gives = append(gives, give)
	}
	b, give := bulkBuffer()
	if len(*b) != mediumBufferSize {
		t.Fatalf("past the limit a %d-byte buffer was lent, want %d", len(*b), mediumBufferSize)
	}
	give()
	gives[0]()
	b, give = bulkBuffer()
	if len(*b) != largeBufferSize {
		t.Fatalf("after one came back a %d-byte buffer was lent, want large", len(*b))
	}
	give()
	for _, g := range gives[1:] {
		g()
	}
	if out := largeOut.Load(); out != 0 {
		t.Fatalf("largeOut = %d after every buffer came back", out)
	}
}

// A stream silent both ways for the idle timeout is aborted with
// route.ErrIdle; one that moves a byte more often than that is not.
func TestJoinIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	t.Run("silent", func(t *testing.T) {
		clientA, proxyA := testutil.TCPPair(t)
		proxyB, originB := testutil.TCPPair(t)
		defer clientA.Close()
		defer originB.Close()
		start := time.Now()
		_, _, err := Join(tcpEnd{proxyA}, tcpEnd{proxyB}, idle)
		elapsed := time.Since(start)
		if !errors.Is(err, route.ErrIdle) {
			t.Fatalf("join = %v, want route.ErrIdle", err)
		}
		if elapsed < idle || elapsed > idle+time.Second {
			t.Errorf("closed after %s, want about %s", elapsed, idle)
		}
	})
	t.Run("trickle", func(t *testing.T) {
		clientA, proxyA := testutil.TCPPair(t)
		proxyB, originB := testutil.TCPPair(t)
		defer originB.Close()
		done := make(chan error, 1)
		go func() { _, _, err := Join(tcpEnd{proxyA}, tcpEnd{proxyB}, idle); done <- err }()
		buf := make([]byte, 1)
		for range 8 { // 8 × 100 ms: well past the idle timeout in total
			time.Sleep(idle / 3)
			if _, err := clientA.Write([]byte{'x'}); err != nil {
				t.Fatalf("write: %v", err)
			}
			_ = originB.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := originB.Read(buf); err != nil {
				t.Fatalf("a trickling stream was cut: %v", err)
			}
		}
		_ = clientA.CloseWrite()
		_ = originB.CloseWrite()
		if err := <-done; err != nil {
			t.Errorf("join = %v, want a clean end", err)
		}
		_ = clientA.Close()
	})
}

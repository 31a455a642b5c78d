package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// brokenTransport's listeners fail their first Accept with err, as a
// transport whose socket broke under it would.
type brokenTransport struct {
	transport.Transport
	err error
}

func (b brokenTransport) Listen(addr string, c *transport.Config) (transport.Listener, error) {
	ln, err := b.Transport.Listen(addr, c)
	if err != nil {
		return nil, err
	}
	return brokenListener{Listener: ln, err: b.err}, nil
}

type brokenListener struct {
	transport.Listener
	err error
}

func (l brokenListener) Accept(context.Context) (transport.Session, error) { return nil, l.err }

// waitRun waits for Run's result on done.
func waitRun(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

// A listen side whose tunnel listener cannot accept any more stops, and
// Run says why rather than serving nothing silently. (Binding is New's,
// so that an address in use is reported before Run:
// TestNewReportsTheFieldAtFault.)
func TestRunReturnsTheErrorThatStoppedIt(t *testing.T) {
	broken := errors.New("socket gone")
	listenStore, _ := pinned.Stores(t, wire.ALPN)
	e, err := New(Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: brokenTransport{memtransport.New(), broken},
		Forward: []Route{{Name: "web", Addr: "127.0.0.1:0"}}, TLS: listenStore,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(context.Background()) }()
	if err := waitRun(t, done); !errors.Is(err, broken) {
		t.Fatalf("Run returned %v, want the accept error", err)
	}
	// Stopped means closed: the forward listener no longer accepts.
	if c, err := net.Dial("tcp", e.ForwardAddrs()[0].String()); err == nil {
		_ = c.Close()
		t.Error("the forward route still accepts after Run returned")
	}
}

// Run's context ending stops the engine at once; Run returns its cause.
func TestRunReturnsItsContextsCause(t *testing.T) {
	listenStore, _ := pinned.Stores(t, wire.ALPN)
	e, err := New(Config{Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: memtransport.New(), TLS: listenStore})
	if err != nil {
		t.Fatal(err)
	}
	stop := errors.New("told to stop")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	cancel(stop)
	if err := waitRun(t, done); !errors.Is(err, stop) {
		t.Fatalf("Run returned %v, want the context's cause", err)
	}
	if err := e.Run(context.Background()); err == nil {
		t.Error("a second Run returned nil")
	}
}

// drainPair runs a listen side delivering to an echo origin and a dial
// side forwarding to it; the dial side is returned with its Run's result.
func drainPair(t *testing.T) (dial *Engine, addr string, done <-chan error) {
	tr := memtransport.New()
	echo := testutil.EchoOrigin(t)
	listenStore, dialStore := pinned.Stores(t, wire.ALPN)
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tr,
		Target: []Route{{Name: "echo", Addr: echo}}, TLS: listenStore, ReadyTargetDown: -1,
	})
	dial, err := New(Config{
		Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: tr, Connections: 1,
		Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}}, TLS: dialStore,
	})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 1)
	go func() { ch <- dial.Run(context.Background()) }()
	t.Cleanup(dial.Close)
	waitTunnels(t, dial)
	return dial, dial.ForwardAddrs()[0].String(), ch
}

// openClient connects a client to addr whose stream is up end to end,
// with a deadline on everything it does.
func openClient(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	echoOnce(t, c, "open")
	return c
}

// waitRefusing waits until nothing accepts on addr any more.
func waitRefusing(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		_ = nc.Close()
		if time.Now().After(deadline) {
			t.Fatal("the forward route still accepts during Shutdown")
		}
	}
}

// echoOnce writes msg on c and reads it back.
func echoOnce(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo read %q, %v; want %q", got, err, msg)
	}
}

// Shutdown stops accepting, lets an open stream carry on, and returns nil
// as soon as it ends, well before its deadline.
func TestShutdownReturnsWhenStreamsFinish(t *testing.T) {
	dial, addr, done := drainPair(t)
	c := openClient(t, addr)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- dial.Shutdown(ctx) }()
	// New clients are refused: the forward listener closes first.
	waitRefusing(t, addr)
	echoOnce(t, c, "during the drain")
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a stream open", err)
	default:
	}
	start := time.Now()
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after the client's FIN read %q, %v; want EOF", rest, err)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatalf("Shutdown returned %v after its streams finished, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last stream finished")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Shutdown took %s after the last stream finished", took.Round(time.Millisecond))
	}
	if err := waitRun(t, done); !errors.Is(err, ErrClosed) {
		t.Errorf("Run returned %v after Shutdown, want ErrClosed", err)
	}
}

// When Shutdown's deadline passes with a stream open, the stream is closed
// and Shutdown returns the context's error, wrapped.
func TestShutdownDeadlineClosesOpenStreams(t *testing.T) {
	dial, addr, done := drainPair(t)
	c := openClient(t, addr)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := dial.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || err == context.DeadlineExceeded {
		t.Fatalf("Shutdown returned %v, want context.DeadlineExceeded wrapped", err)
	}
	// The client's connection ends rather than hangs.
	expectEnds(t, c, "the stream left open by the drain")
	if err := waitRun(t, done); !errors.Is(err, ErrClosed) {
		t.Errorf("Run returned %v after Shutdown, want ErrClosed", err)
	}
}

// An engine shut down before Run never serves: Run returns ErrClosed at
// once, and the engine has left its metrics.
func TestShutdownBeforeRun(t *testing.T) {
	listenStore, _ := pinned.Stores(t, wire.ALPN)
	m := NewMetrics()
	e, err := New(Config{Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: memtransport.New(), TLS: listenStore, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with no stream open returned %v, want nil", err)
	}
	if n := len(m.attached()); n != 0 {
		t.Errorf("%d engines still report into the metrics after Shutdown", n)
	}
	if err := e.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Shutdown returned %v, want ErrClosed", err)
	}
	if err := e.Shutdown(ctx); err != nil {
		t.Errorf("a second Shutdown returned %v, want nil", err)
	}
}

// Close during Shutdown ends the drain at once: the open stream is cut and
// Shutdown says so.
func TestCloseCutsShutdownShort(t *testing.T) {
	dial, addr, done := drainPair(t)
	c := openClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- dial.Shutdown(ctx) }()
	// The drain has begun once the forward listener refuses.
	waitRefusing(t, addr)
	dial.Close()
	select {
	case err := <-shut:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Shutdown cut short by Close returned %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end Shutdown's drain")
	}
	expectEnds(t, c, "the stream cut by Close")
	if err := waitRun(t, done); !errors.Is(err, ErrClosed) {
		t.Errorf("Run returned %v, want ErrClosed", err)
	}
}

// expectEnds reads c to its end and fails the test if it hangs instead
// (reads until the client's deadline); what names the connection.
func expectEnds(t *testing.T, c net.Conn, what string) {
	t.Helper()
	if _, err := io.ReadAll(c); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s hangs: %v", what, err)
		}
	}
}

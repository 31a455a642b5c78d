package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/logtest"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	pinnedtest "github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
	"github.com/pqtunnel/pqtunnel/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testSettingName names the Config fields the tests' messages name as
// pqtunnel's variables do.
func testSettingName(field string) string {
	if v, ok := map[string]string{
		"Target": "PQT_TARGET", "MaxConnMemory": "PQT_MAX_CONN_MEMORY",
		"MaxStreams": "PQT_MAX_STREAMS", "MaxConnections": "PQT_MAX_CONNECTIONS",
	}[field]; ok {
		return v
	}
	return field
}

// runEngine starts an engine, naming settings with testSettingName unless
// cfg names them; cleanup shuts it down, draining for up to 2 s, and
// requires Run to return ErrClosed.
func runEngine(t *testing.T, cfg Config) *Engine {
	t.Helper()
	const drain = 2 * time.Second
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = drain
	}
	if cfg.SettingName == nil {
		cfg.SettingName = testSettingName
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.Mode, err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(context.Background()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		_ = e.Shutdown(ctx) // a test may leave streams open: they are closed past the drain
		select {
		case err := <-done:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("%s engine: Run returned %v after Shutdown, want ErrClosed", cfg.Mode, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s engine: Run did not return after Shutdown", cfg.Mode)
		}
	})
	return e
}

// waitTunnels waits until e has at least one tunnel connection up.
func waitTunnels(t *testing.T, e *Engine) []transport.Info {
	t.Helper()
	timeout := time.NewTimer(15 * time.Second)
	defer timeout.Stop()
	for {
		changed := e.TunnelsChanged()
		if infos := e.Tunnels(); len(infos) > 0 {
			return infos
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatal("no tunnel connection came up")
		}
	}
}

// echoThrough sends payload through addr and checks that it comes back byte-exact.
func echoThrough(addr string, payload []byte) error {
	got, err := roundTrip(addr, payload)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo returned %d bytes, want %d byte-exact", len(got), len(payload))
	}
	return nil
}

// roundTrip sends payload to addr and half-closes while it reads, and
// returns all it read.
func roundTrip(addr string, payload []byte) ([]byte, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	if err := <-werr; err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	return got, nil
}

// expectRefused connects to addr and requires the connection to end
// (EOF or reset) well before a 2 s deadline.
func expectRefused(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return // refused before connect even returned
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Write([]byte("hello?")) // may already fail
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	var ne net.Error
	switch {
	case err == nil:
		t.Fatalf("client read %q; want the connection refused", buf[:n])
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("client was left hanging: %v", err)
	}
}

func TestEngineEndToEnd(t *testing.T) {
	// memtransport is what the other unit tests run over; the real
	// transports on loopback show that it behaves the same.
	for _, tr := range []transport.Transport{memtransport.New(), quic.Transport{}, tlsmux.Transport{}} {
		t.Run(tr.Name(), func(t *testing.T) {
			echo := testutil.EchoOrigin(t)
			listenStore, dialStore := pinnedtest.Stores(t, wire.ALPN)
			var listenLogs logtest.Recorder
			listen := runEngine(t, Config{
				Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tr,
				Target: []Route{{Name: "echo", Addr: echo}, {Name: "refused", Addr: testutil.ClosedAddr(t)}},
				TLS:    listenStore,
				Logger: slog.New(&listenLogs),
			})
			dial := runEngine(t, Config{
				Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: tr, Connections: 1,
				Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}, {Name: "nope", Addr: "127.0.0.1:0"}, {Name: "refused", Addr: "127.0.0.1:0"}},
				TLS:     dialStore,
			})
			fwd := dial.ForwardAddrs()
			echoAddr, nopeAddr, refusedAddr := fwd[0].String(), fwd[1].String(), fwd[2].String()

			for _, side := range []struct {
				e    *Engine
				peer *hybridtls.Store
			}{{listen, dialStore}, {dial, listenStore}} {
				infos := waitTunnels(t, side.e)
				info := infos[0]
				if info.Transport != tr.Name() {
					t.Errorf("tunnel transport = %q, want %q", info.Transport, tr.Name())
				}
				if info.TLS.CurveID != tls.X25519MLKEM768 {
					t.Errorf("tunnel group = %s, want X25519MLKEM768", hybridtls.GroupName(info.TLS.CurveID))
				}
				if !info.Peer.PQAuth || info.Peer.Name != side.peer.Authenticator().Name() {
					t.Errorf("tunnel peer = %+v, want the peer's pin with PQAuth", info.Peer)
				}
			}

			t.Run("concurrent echo", func(t *testing.T) {
				const conns, size = 50, 64 << 10
				errs := make(chan error, conns)
				var wg sync.WaitGroup
				for i := range conns {
					payload := testutil.RandomBytes(t, size)
					wg.Add(1)
					go func() {
						defer wg.Done()
						if err := echoThrough(echoAddr, payload); err != nil {
							errs <- fmt.Errorf("connection %d: %w", i, err)
						}
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Error(err)
				}
			})
			t.Run("unknown route", func(t *testing.T) {
				expectRefused(t, nopeAddr)
				if !listenLogs.Contains("stream refused", "reason=unknown route", `route "nope"`, "is not in this side's PQT_TARGET") {
					t.Errorf("listen side did not log the unknown route; logs: %q", listenLogs.All())
				}
				// A peer-chosen route name never becomes a metric label.
				families, err := listen.metrics.Registry().Gather()
				if err != nil {
					t.Fatal(err)
				}
				sawUnknown := false
				for _, f := range families {
					for _, m := range f.GetMetric() {
						for _, l := range m.GetLabel() {
							if l.GetName() == "route" && l.GetValue() == "nope" {
								t.Errorf("%s has a series for the peer's route name %q", f.GetName(), l.GetValue())
							}
							sawUnknown = sawUnknown || l.GetName() == "route" && l.GetValue() == "unknown"
						}
					}
				}
				if !sawUnknown {
					t.Error("the unknown route was not counted under route=\"unknown\"")
				}
				if err := echoThrough(echoAddr, []byte("still works")); err != nil {
					t.Fatalf("after an unknown route: %v", err)
				}
			})
			t.Run("origin refused", func(t *testing.T) {
				expectRefused(t, refusedAddr)
				if !listenLogs.Contains("stream refused", "reason=origin refused") {
					t.Errorf("listen side did not log the refused origin; logs: %q", listenLogs.All())
				}
				if err := echoThrough(echoAddr, []byte("still works")); err != nil {
					t.Fatalf("after a refused origin: %v", err)
				}
			})
			if n := len(dial.Tunnels()); n != 1 {
				t.Errorf("dial side has %d tunnels after refused streams, want 1 (the tunnel stays up)", n)
			}
		})
	}
}

func TestEngineRefusesClientsWithoutTunnel(t *testing.T) {
	_, dialStore := pinnedtest.Stores(t, wire.ALPN)
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{"127.0.0.1:1"}, Transport: memtransport.New(),
		Forward: []Route{{Name: "", Addr: "127.0.0.1:0"}},
		TLS:     dialStore,
	})
	expectRefused(t, dial.ForwardAddrs()[0].String())
	if n := len(dial.Tunnels()); n != 0 {
		t.Fatalf("%d tunnels up to a closed port", n)
	}
}

// A dial side on a Fallback that fell back moves its tunnel to the primary
// transport once that works again, retires the old tunnel, and carries
// traffic on.
func TestEngineMovesTunnelToSuccessor(t *testing.T) {
	prim := transporttest.NewBlockable()
	auto := transport.Fallback(prim, memtransport.New())
	echo := testutil.EchoOrigin(t)
	listenStore, dialStore := pinnedtest.Stores(t, wire.ALPN)
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: auto,
		Target: []Route{{Name: "echo", Addr: echo}}, TLS: listenStore,
	})
	prim.Blocked.Store(true)
	var logs logtest.Recorder
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: auto, Connections: 1,
		Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}}, TLS: dialStore,
		FallbackTimeout: 200 * time.Millisecond, QUICRetry: 100 * time.Millisecond,
		Logger: slog.New(&logs),
	})
	waitTunnels(t, dial)
	fwd := dial.ForwardAddrs()[0].String()
	if err := echoThrough(fwd, []byte("over the secondary")); err != nil {
		t.Fatal(err)
	}
	if !logs.Contains("fakeudp handshake timed out, falling back to mem") {
		t.Fatalf("no fallback was logged; logs: %q", logs.All())
	}

	fallen := fmt.Sprintf("tunnel=%d", dial.Readiness().Tunnels[0].ID)
	prim.Blocked.Store(false)
	timeout := time.After(10 * time.Second)
	for !logs.Contains("fakeudp works again: moving tunnel back from mem", fallen) {
		select {
		case <-dial.TunnelsChanged():
		case <-time.After(50 * time.Millisecond): // the log line may follow the change
		case <-timeout:
			t.Fatalf("the tunnel did not move back; logs: %q", logs.All())
		}
	}
	if err := echoThrough(fwd, []byte("over the primary")); err != nil {
		t.Fatalf("after the move: %v", err)
	}
	for len(dial.Tunnels()) != 1 {
		select {
		case <-dial.TunnelsChanged():
		case <-timeout:
			t.Fatalf("%d tunnels after the move, want the successor alone", len(dial.Tunnels()))
		}
	}
}

// A stream of a kind this side does not deliver is refused with its own
// status; the tunnel stays up for the streams that follow.
func TestEngineRefusesUnknownKind(t *testing.T) {
	mem := memtransport.New()
	listenStore, dialStore := pinnedtest.Stores(t, wire.ALPN)
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: mem,
		Target: []Route{{Name: "echo", Addr: testutil.EchoOrigin(t)}}, TLS: listenStore,
	})
	s := peerSession(t, mem, listen, dialStore)
	for _, tt := range []struct {
		kind wire.Kind
		want wire.Status
	}{{7, wire.StatusUnknownKind}, {wire.KindTCP, wire.StatusOK}} {
		resp, err := askStream(t, s, wire.Request{Kind: tt.kind, Route: "echo", Client: "192.0.2.1:1", Server: "192.0.2.2:2"})
		if err != nil || resp.Status != tt.want {
			t.Errorf("kind %s: response %+v, %v; want %s", tt.kind, resp, err, tt.want)
		}
	}
}

// peerSession is a tunnel session to the listen side e over tr as the peer
// of store, for tests that write preambles themselves; it closes at cleanup.
func peerSession(t *testing.T, tr transport.Transport, e *Engine, store *hybridtls.Store) transport.Session {
	t.Helper()
	s, err := tr.Dial(transporttest.Ctx(t), e.TunnelAddr().String(), &transport.Config{
		TLS: store.ClientConfig(), Authenticate: transporttest.StoreAuth(store),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// askStream opens a stream on s, sends req's preamble and returns the
// answer; the stream is reset after it.
func askStream(t *testing.T, s transport.Session, req wire.Request) (wire.Response, error) {
	t.Helper()
	st, err := s.OpenStream(transporttest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Reset()
	_ = st.SetDeadline(time.Now().Add(5 * time.Second))
	hdr, err := wire.AppendRequest(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(hdr); err != nil {
		t.Fatal(err)
	}
	return wire.ReadResponse(st)
}

// Over tcp, a client that would take every tunnel connection past its
// memory bound, with the dial side at PQT_MAX_CONNECTIONS, is refused with a
// line naming PQT_MAX_CONN_MEMORY, and the clients already carried keep
// working.
func TestEngineRefusesClientPastConnMemory(t *testing.T) {
	echo := testutil.EchoOrigin(t)
	listenStore, dialStore := pinnedtest.Stores(t, wire.ALPN)
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tlsmux.Transport{},
		Target: []Route{{Name: "echo", Addr: echo}}, TLS: listenStore,
	})
	var logs logtest.Recorder
	// 1 MiB leaves room for one stream each way per tunnel connection,
	// and the dial side may open one more connection.
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: tlsmux.Transport{}, Connections: 1, MaxConnections: 2,
		Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}}, TLS: dialStore, Logger: slog.New(&logs),
		Mux: transport.Config{MaxConnMemory: 1 << 20},
	})
	waitTunnels(t, dial)
	fwd := dial.ForwardAddrs()[0].String()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	deadline := time.Now().Add(15 * time.Second)
	for !logs.Contains("client refused", "PQT_MAX_CONN_MEMORY reached") {
		if time.Now().After(deadline) || len(held) > 16 {
			t.Fatalf("%d clients held and none refused for the memory bound; logs: %q", len(held), logs.All())
		}
		c, err := net.Dial("tcp", fwd)
		if err != nil {
			continue // refused so fast that the dial saw the reset
		}
		held = append(held, c)
		// A round trip proves the stream is open before the next client.
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("x")); err == nil {
			_, _ = io.ReadFull(c, make([]byte, 1))
		}
	}
	if len(held) < 2 {
		t.Errorf("refused at client %d: the bound leaves room for two", len(held))
	}
	if _, err := held[0].Write([]byte("y")); err != nil {
		t.Fatalf("the first client after the refusal: %v", err)
	}
	if _, err := io.ReadFull(held[0], make([]byte, 1)); err != nil {
		t.Fatalf("the first client after the refusal: %v", err)
	}
}

// Over tcp, a dial side whose peer accepts fewer streams per connection
// than this side's own settings assume (here the listen side's
// MaxStreams is 2, the dial side's 4) learns the peer's bound from the
// first stream the peer's yamux refuses: that client is refused with a
// line naming the peer's settings rather than "stream aborted", and the
// next clients go to a second tunnel connection instead of being reset.
func TestDialSideLearnsThePeersLowerStreamBound(t *testing.T) {
	const peerStreams = 2
	echo := testutil.EchoOrigin(t)
	listenStore, dialStore := pinnedtest.Stores(t, wire.ALPN)
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tlsmux.Transport{},
		Target: []Route{{Name: "echo", Addr: echo}}, TLS: listenStore,
		Mux: transport.Config{MaxStreams: peerStreams},
	})
	var logs logtest.Recorder
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: tlsmux.Transport{}, Connections: 1, MaxConnections: 2,
		Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}}, TLS: dialStore, Logger: slog.New(&logs),
		Mux: transport.Config{MaxStreams: 2 * peerStreams},
	})
	t.Cleanup(func() { // the dial side's story, for a failure that names no log line
		if t.Failed() {
			for _, l := range logs.All() {
				t.Log(l)
			}
		}
	})
	waitTunnels(t, dial)
	fwd := dial.ForwardAddrs()[0].String()
	for i := range peerStreams {
		if _, err := holdEcho(t, fwd); err != nil {
			t.Fatalf("client %d of the first connection's %d: %v", i+1, peerStreams, err)
		}
	}
	expectRefused(t, fwd)
	waitFor(t, "the refusal's log line", func() bool { return logs.Contains("client refused", "the peer refused the stream") })
	if !logs.Contains("client refused", "PQT_MAX_STREAMS or PQT_MAX_CONN_MEMORY is lower than this side's") {
		t.Errorf("the refusal does not name the peer's settings: %q", logs.All())
	}
	waitFor(t, "a second tunnel connection", func() bool { return len(dial.Tunnels()) == 2 })
	for i := range peerStreams {
		if _, err := holdEcho(t, fwd); err != nil {
			t.Fatalf("client %d of the second connection's %d: %v", i+1, peerStreams, err)
		}
	}
	// Both connections now carry the peer's bound: the next client is
	// refused before any stream is opened, naming the learned bound.
	expectRefused(t, fwd)
	waitFor(t, "the full pool's log line", func() bool {
		return logs.Contains("client refused", "the peer's stream bound (its PQT_MAX_STREAMS or PQT_MAX_CONN_MEMORY) reached on every tunnel connection", "limit=2", "tunnels=2")
	})
	if logs.Contains("stream aborted") || logs.Contains("send preamble failed") {
		t.Errorf("a client was reset instead of refused: %q", logs.All())
	}
}

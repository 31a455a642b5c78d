package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	pinnedtest "github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/route/tcproute"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/wire"
)

// Benchmarks of the engine's hot paths. Where a result has a plain-TCP
// equivalent, it is measured in the same benchmark and reported as a ratio:
// x-direct is the tunnel's rate over direct loopback TCP's (1 = as fast).

func BenchmarkPreambleEncode(b *testing.B) {
	req := wire.Request{Route: "redis", Client: "192.0.2.10:54321"}
	resp := wire.Response{Status: wire.StatusOK}
	b.Run("request", func(b *testing.B) {
		buf := make([]byte, 0, 64)
		b.ReportAllocs()
		for b.Loop() {
			var err error
			if buf, err = wire.AppendRequest(buf[:0], req); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(int64(len(buf)))
	})
	b.Run("response", func(b *testing.B) {
		buf := make([]byte, 0, 64)
		b.ReportAllocs()
		for b.Loop() {
			buf = wire.AppendResponse(buf[:0], resp)
		}
		b.SetBytes(int64(len(buf)))
	})
}

func BenchmarkPreambleDecode(b *testing.B) {
	req, err := wire.AppendRequest(nil, wire.Request{Route: "redis", Client: "192.0.2.10:54321"})
	if err != nil {
		b.Fatal(err)
	}
	resp := wire.AppendResponse(nil, wire.Response{Status: wire.StatusOK})
	for _, c := range []struct {
		name string
		enc  []byte
		read func(io.Reader) error
	}{
		{"request", req, func(r io.Reader) error { _, err := wire.ReadRequest(r); return err }},
		{"response", resp, func(r io.Reader) error { _, err := wire.ReadResponse(r); return err }},
	} {
		b.Run(c.name, func(b *testing.B) {
			r := bytes.NewReader(c.enc)
			b.SetBytes(int64(len(c.enc)))
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(c.enc)
				if err := c.read(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchPair returns both ends of a loopback TCP connection, closed at cleanup.
func benchPair(b *testing.B) (client, server *net.TCPConn) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept() // a failure shows as a nil conn below
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		b.Fatal("accept failed")
	}
	client, server = c.(*net.TCPConn), s.(*net.TCPConn)
	deadline := time.Now().Add(time.Minute) // a hang fails the benchmark, not the run
	for _, x := range []*net.TCPConn{client, server} {
		_ = x.SetDeadline(deadline)
		b.Cleanup(func() { _ = x.Close() })
	}
	return client, server
}

const benchChunk = 32 << 10

// benchSend writes n chunks into w, half-closes it, and returns once the
// reader r has seen EOF after every byte.
func benchSend(b *testing.B, w, r *net.TCPConn, n int) time.Duration {
	b.Helper()
	chunk := make([]byte, benchChunk)
	got := make(chan int64, 1)
	go func() {
		m, _ := io.Copy(io.Discard, r) // a short count fails below
		got <- m
	}()
	start := time.Now()
	for range n {
		if _, err := w.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	if m := <-got; m != int64(n)*benchChunk {
		b.Fatalf("received %d bytes, want %d", m, int64(n)*benchChunk)
	}
	return time.Since(start)
}

// BenchmarkJoin is the copy loop: bytes from a client through join to an
// origin, 32 KiB per op, against the same bytes over one loopback pair.
func BenchmarkJoin(b *testing.B) {
	client, proxyA := benchPair(b)
	proxyB, origin := benchPair(b)
	done := make(chan error, 1)
	go func() {
		_, _, err := tcproute.Join(sockEnd{proxyA}, sockEnd{proxyB}, 0)
		done <- err
	}()
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	b.ResetTimer()
	joined := benchSend(b, client, origin, b.N)
	b.StopTimer()
	// The origin's FIN ends the other direction, and join with it.
	if err := origin.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, client); err != nil {
		b.Fatal(err)
	}
	if err := <-done; err != nil {
		b.Fatalf("join: %v", err)
	}
	dc, ds := benchPair(b)
	direct := benchSend(b, dc, ds, b.N)
	b.ReportMetric(direct.Seconds()/joined.Seconds(), "x-direct")
}

// benchEngine starts one engine that runs until cleanup.
func benchEngine(b *testing.B, mode Mode, tr transport.Transport, tunnel string, self, peer *pinned.Identity, fwd, tgt []Route, opts benchOptions) *Engine {
	b.Helper()
	store, err := hybridtls.NewStore(hybridtls.Policy{Mode: hybridtls.Strict, Groups: hybridtls.DefaultGroups, ALPN: wire.ALPN},
		&pinned.Authenticator{Identity: self, Peers: []pinned.Pin{peer.Pin}})
	if err != nil {
		b.Fatal(err)
	}
	e, err := New(Config{
		Mode: mode, Tunnel: []string{tunnel}, Transport: tr, Connections: 1,
		Forward: fwd, Target: tgt, TLS: store, DrainTimeout: time.Second,
		AccessLog: opts.accessLog, Logger: opts.logger,
	})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.Run(context.Background()) // ErrClosed after the shutdown
	}()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = e.Shutdown(ctx) // past the second, streams left are closed
		<-done
	})
	return e
}

// benchOptions are the engine settings a benchmark varies.
type benchOptions struct {
	accessLog bool
	logger    *slog.Logger // nil discards
}

// benchTunnel starts a listen side delivering to origin and a dial side
// forwarding to it over transport, and returns the forward address.
func benchTunnel(b *testing.B, tr transport.Transport, origin string, opts benchOptions) string {
	b.Helper()
	listenID, dialID := pinnedtest.Identities(b)
	listen := benchEngine(b, ModeListen, tr, "127.0.0.1:0", listenID, dialID, nil, []Route{{Name: "bench", Addr: origin}}, opts)
	dial := benchEngine(b, ModeDial, tr, listen.TunnelAddr().String(), dialID, listenID, []Route{{Name: "bench", Addr: "127.0.0.1:0"}}, nil, opts)
	deadline := time.After(15 * time.Second)
	for {
		changed := dial.TunnelsChanged()
		if len(dial.Tunnels()) > 0 {
			break
		}
		select {
		case <-changed:
		case <-deadline:
			b.Fatal("no tunnel connection within 15s")
		}
	}
	return dial.ForwardAddrs()[0].String()
}

// benchAccept listens on loopback and hands each accepted connection over;
// they are closed at cleanup.
func benchAccept(b *testing.B) (string, <-chan *net.TCPConn) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	conns := make(chan *net.TCPConn, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*net.TCPConn)
			b.Cleanup(func() { _ = tc.Close() })
			conns <- tc
		}
	}()
	b.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return ln.Addr().String(), conns
}

// BenchmarkTunnelBulk uploads through a dial and a listen engine in this
// process, 32 KiB per op, then the same bytes over one loopback pair.
func BenchmarkTunnelBulk(b *testing.B) {
	for _, tr := range []transport.Transport{tlsmux.Transport{}, quic.Transport{}} {
		b.Run(tr.Name(), func(b *testing.B) {
			origin, accepted := benchAccept(b)
			forward := benchTunnel(b, tr, origin, benchOptions{})
			c, err := net.DialTimeout("tcp", forward, 5*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Minute)) // a hang fails the benchmark
			client := c.(*net.TCPConn)
			// The origin connection appears once the first bytes open the stream.
			if _, err := client.Write([]byte{0}); err != nil {
				b.Fatal(err)
			}
			var server *net.TCPConn
			select {
			case server = <-accepted:
			case <-time.After(15 * time.Second):
				b.Fatal("the stream did not reach the origin")
			}
			if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(benchChunk)
			b.ReportAllocs()
			b.ResetTimer()
			tunnel := benchSend(b, client, server, b.N)
			b.StopTimer()
			dc, ds := benchPair(b)
			direct := benchSend(b, dc, ds, b.N)
			b.ReportMetric(direct.Seconds()/tunnel.Seconds(), "x-direct")
		})
	}
}

// benchEchoOnce is one connect + 1-byte echo + close.
func benchEchoOnce(b *testing.B, addr string) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second)) // a failure shows as an I/O error
	buf := []byte{'x'}
	if _, err := c.Write(buf); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		b.Fatalf("read echo: %v", err)
	}
	if err := c.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkStreamRoundTrip is a client's connect + 1-byte echo + close
// through a dial and a listen engine in this process, per transport. The
// same number of direct echoes follows; x-direct is the tunnel's rate over
// direct's and us-added/op the latency the tunnel adds.
func BenchmarkStreamRoundTrip(b *testing.B) {
	for _, tr := range []transport.Transport{tlsmux.Transport{}, quic.Transport{}} {
		b.Run(tr.Name(), func(b *testing.B) { benchRoundTrip(b, tr, benchOptions{}) })
	}
}

// BenchmarkStreamRoundTripAccessLog is BenchmarkStreamRoundTrip over TCP
// with both sides' JSON logs written (to nowhere) at INFO, with the access
// log off and on: the difference is what PQT_ACCESS_LOG=on costs a
// connection.
func BenchmarkStreamRoundTripAccessLog(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(map[bool]string{false: "off", true: "on"}[on], func(b *testing.B) {
			benchRoundTrip(b, tlsmux.Transport{}, benchOptions{accessLog: on, logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
		})
	}
}

// BenchmarkAccessLogLine is the cost of writing one access-log line
// through slog's JSON handler.
func BenchmarkAccessLogLine(b *testing.B) {
	e := &Engine{cfg: Config{AccessLog: true}, log: slog.New(slog.NewJSONHandler(io.Discard, nil))}
	b.ReportAllocs()
	for b.Loop() {
		r := e.newAccessRecord("out", "redis", "127.0.0.1:50312", time.Now())
		r.peer, r.tunnel, r.transport = "pqt1_7qyx7sz4cmzcs3xghe6gcu45fkhsnac3iwryu2lesdm2tb6vrleq", 3, "quic"
		r.finished(1200, 53000, nil)
		e.logAccess(r)
	}
}

// benchRoundTrip measures connect + 1-byte echo + close through a tunnel
// over tr, then as often directly.
func benchRoundTrip(b *testing.B, tr transport.Transport, opts benchOptions) {
	origin := testutil.EchoOrigin(b)
	forward := benchTunnel(b, tr, origin, opts)
	benchEchoOnce(b, forward) // the first stream pays for warming up
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		benchEchoOnce(b, forward)
	}
	tunnel := time.Since(start)
	b.StopTimer()
	start = time.Now()
	for range b.N {
		benchEchoOnce(b, origin)
	}
	direct := time.Since(start)
	b.ReportMetric(direct.Seconds()/tunnel.Seconds(), "x-direct")
	b.ReportMetric(float64((tunnel-direct).Microseconds())/float64(b.N), "us-added/op")
}

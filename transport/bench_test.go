package transport_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

const benchALPN = "pqtunnel-bench/1"

// benchTLS returns a server and a client configuration sharing one
// self-signed Ed25519 certificate, with the default hybrid group.
func benchTLS(b *testing.B) (server, client *tls.Config) {
	b.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "bench"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		b.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	base := tls.Config{
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{tls.X25519MLKEM768},
		NextProtos:       []string{benchALPN},
	}
	server, client = base.Clone(), base.Clone()
	server.Certificates = []tls.Certificate{cert}
	client.InsecureSkipVerify = true // the benchmark measures streams, not verification
	return server, client
}

// benchSessions returns a dialled and an accepted session over transport;
// both close, and the listener with them, at cleanup.
func benchSessions(b *testing.B, tr transport.Transport) (client, server transport.Session) {
	b.Helper()
	stc, ctc := benchTLS(b)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ln, err := tr.Listen("127.0.0.1:0", &transport.Config{TLS: stc})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ln.Close() })
	accepted := make(chan transport.Session, 1)
	go func() {
		s, _ := ln.Accept(ctx) // a failure shows as a nil session below
		accepted <- s
	}()
	client, err = tr.Dial(ctx, ln.Addr().String(), &transport.Config{TLS: ctc})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = client.Close() })
	if server = <-accepted; server == nil {
		b.Fatal("accept failed")
	}
	b.Cleanup(func() { _ = server.Close() })
	return client, server
}

// benchServeEcho answers each stream of s: it echoes one byte, half-closes,
// and closes after the peer's FIN. It stops when s closes, at cleanup.
func benchServeEcho(b *testing.B, s transport.Session) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			st, err := s.AcceptStream(context.Background())
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer st.Close()
				buf := make([]byte, 1)
				if _, err := io.ReadFull(st, buf); err != nil {
					st.Reset()
					return
				}
				if _, err := st.Write(buf); err != nil {
					st.Reset()
					return
				}
				_ = st.CloseWrite()            // the client sees a failure as a missing FIN
				_, _ = io.Copy(io.Discard, st) // until the client's FIN
			}()
		}
	}()
	b.Cleanup(func() {
		_ = s.Close()
		wg.Wait()
	})
}

// benchStreamOnce opens a stream, echoes one byte, and closes it both ways.
func benchStreamOnce(ctx context.Context, s transport.Session) error {
	st, err := s.OpenStream(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(5 * time.Second)) // a failure shows as an I/O error
	buf := []byte{'x'}
	if _, err := st.Write(buf); err != nil {
		return err
	}
	if _, err := io.ReadFull(st, buf); err != nil {
		return err
	}
	if err := st.CloseWrite(); err != nil {
		return err
	}
	if n, err := st.Read(buf); n != 0 || err != io.EOF {
		return errors.New("stream did not end with the peer's FIN")
	}
	return nil
}

// benchDirectOnce is the plain-TCP equivalent: connect, echo, close.
func benchDirectOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second)) // a failure shows as an I/O error
	buf := []byte{'x'}
	if _, err := c.Write(buf); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		return errors.New("connection did not end with the peer's FIN")
	}
	return nil
}

// BenchmarkStreamOpenClose is one stream's life on a live session: open,
// 1-byte echo, FIN both ways. The same number of plain TCP connections
// (connect, echo, FIN both ways) follows; x-direct is the stream rate over
// the TCP connection rate.
func BenchmarkStreamOpenClose(b *testing.B) {
	for _, tr := range []transport.Transport{tlsmux.Transport{}, quic.Transport{}} {
		b.Run(tr.Name(), func(b *testing.B) {
			client, server := benchSessions(b, tr)
			benchServeEcho(b, server)
			direct := testutil.EchoOrigin(b)
			ctx := context.Background()
			if err := benchStreamOnce(ctx, client); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if err := benchStreamOnce(ctx, client); err != nil {
					b.Fatal(err)
				}
			}
			streams := time.Since(start)
			b.StopTimer()
			start = time.Now()
			for range b.N {
				if err := benchDirectOnce(direct); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(time.Since(start).Seconds()/streams.Seconds(), "x-direct")
		})
	}
}

// BenchmarkStreamBulk is one stream carrying 256 KiB writes (what the
// proxy's copy loop writes in bulk) to a reader that discards them, on
// each transport; with -cpuprofile it shows where a transport's CPU per
// byte goes.
func BenchmarkStreamBulk(b *testing.B) {
	for _, tr := range []transport.Transport{tlsmux.Transport{}, quic.Transport{}} {
		b.Run(tr.Name(), func(b *testing.B) {
			client, server := benchSessions(b, tr)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			st, err := client.OpenStream(ctx)
			if err != nil {
				b.Fatal(err)
			}
			chunk := make([]byte, 256<<10)
			if _, err := st.Write(chunk[:1]); err != nil { // the QUIC peer sees a stream at its first frame
				b.Fatal(err)
			}
			acc, err := server.AcceptStream(ctx)
			if err != nil {
				b.Fatal(err)
			}
			drained := make(chan int64, 1)
			go func() {
				n, _ := io.Copy(io.Discard, acc) // a short count fails the benchmark below
				drained <- n
			}()
			b.SetBytes(int64(len(chunk)))
			b.ResetTimer()
			for range b.N {
				if _, err := st.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			if err := st.CloseWrite(); err != nil {
				b.Fatal(err)
			}
			if n := <-drained; n != int64(b.N*len(chunk)+1) {
				b.Fatalf("received %d bytes of %d", n, b.N*len(chunk)+1)
			}
		})
	}
}

// BenchmarkStreamRequests is 50 streams of one session, each sending a
// small request and waiting for its echo, as persistent Redis clients do
// through a sidecar, on each transport; with -cpuprofile it shows where a
// transport's CPU per small request goes.
func BenchmarkStreamRequests(b *testing.B) {
	for _, tr := range []transport.Transport{tlsmux.Transport{}, quic.Transport{}} {
		b.Run(tr.Name(), func(b *testing.B) {
			cc, sc := transporttest.Configs(b)
			client, server := transporttest.SessionPair(b, tr, cc, sc)
			streams := transporttest.EchoedStreams(b, client, server, 50)
			b.ReportAllocs()
			b.ResetTimer()
			transporttest.RequestLoad(b, streams, transporttest.RedisGET, b.N)
			b.StopTimer()
		})
	}
}

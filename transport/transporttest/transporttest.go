// Package transporttest holds what the tests of every transport share:
// configurations of two sides that accept each other, and helpers that
// connect sessions and streams.
package transporttest

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport"
)

// ALPN is the application protocol the test stores speak.
const ALPN = "pqtunnel-transport-test/1"

// StoreAuth adapts a hybridtls Store to an Authenticator.
func StoreAuth(s *hybridtls.Store) transport.Authenticator {
	return func(cs *tls.ConnectionState, rw io.ReadWriter, client bool) (transport.Peer, error) {
		role := hybridtls.RoleServer
		if client {
			role = hybridtls.RoleClient
		}
		p, err := s.Authenticate(cs, rw, role)
		return transport.Peer{Name: p.Name, PQAuth: p.PQAuth}, err
	}
}

// Configs returns a client and a server Config authenticating with
// hybridtls, with short timeouts.
func Configs(t testing.TB) (client, server *transport.Config) {
	t.Helper()
	cs, ss := pinned.Stores(t, ALPN)
	client = &transport.Config{TLS: cs.ClientConfig(), Authenticate: StoreAuth(cs), HandshakeTimeout: 10 * time.Second}
	server = &transport.Config{TLS: ss.ServerConfig(), Authenticate: StoreAuth(ss), HandshakeTimeout: 10 * time.Second}
	return client, server
}

// Listen starts a listener for tr on loopback; it closes at cleanup.
func Listen(t testing.TB, tr transport.Transport, c *transport.Config) transport.Listener {
	t.Helper()
	ln, err := tr.Listen("127.0.0.1:0", c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	if got := ln.Transport(); got != tr.Name() {
		t.Errorf("Listener.Transport() = %q, want %q", got, tr.Name())
	}
	return ln
}

// SessionPair returns a connected client and server Session over tr.
// Both, and the listener, close at cleanup.
func SessionPair(t testing.TB, tr transport.Transport, cc, sc *transport.Config) (client, server transport.Session) {
	t.Helper()
	ln := Listen(t, tr, sc)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	type res struct {
		s   transport.Session
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		s, err := ln.Accept(ctx)
		accepted <- res{s, err}
	}()
	client, err := tr.Dial(ctx, ln.Addr().String(), cc)
	if err != nil {
		t.Fatalf("dial %s: %v", tr.Name(), err)
	}
	t.Cleanup(func() { _ = client.Close() })
	r := <-accepted
	if r.err != nil {
		t.Fatalf("accept %s: %v", tr.Name(), r.err)
	}
	t.Cleanup(func() { _ = r.s.Close() })
	return client, r.s
}

// Ctx is a context that ends after 15s or at cleanup.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// OpenAccepted opens a stream from `from` and accepts it on `to`; the opener
// writes first, as a stream is invisible to the QUIC peer before its first frame.
func OpenAccepted(t testing.TB, from, to transport.Session, first []byte) (opened, accepted transport.Stream) {
	t.Helper()
	ctx := Ctx(t)
	opened, err := from.OpenStream(ctx)
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	t.Cleanup(func() { _ = opened.Close() })
	if _, err := opened.Write(first); err != nil {
		t.Fatalf("write first bytes: %v", err)
	}
	accepted, err = to.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("AcceptStream: %v", err)
	}
	t.Cleanup(func() { _ = accepted.Close() })
	got := make([]byte, len(first))
	if _, err := io.ReadFull(accepted, got); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("accepted stream read %q, %v; want %q", got, err, first)
	}
	deadline := time.Now().Add(15 * time.Second)
	_ = opened.SetDeadline(deadline)
	_ = accepted.SetDeadline(deadline)
	return opened, accepted
}

// RedisGET is a Redis GET request as a client sends it.
var RedisGET = []byte("*2\r\n$3\r\nGET\r\n$8\r\nkey:0001\r\n")

// EchoedStreams opens n streams from client whose accepted ends on server
// echo what they read until the opener half-closes, with no deadlines:
// the streams of persistent clients, for a benchmark's load.
func EchoedStreams(t testing.TB, client, server transport.Session, n int) []transport.Stream {
	t.Helper()
	streams := make([]transport.Stream, n)
	var echoes sync.WaitGroup
	for i := range streams {
		opened, accepted := OpenAccepted(t, client, server, []byte("x"))
		_ = opened.SetDeadline(time.Time{})
		_ = accepted.SetDeadline(time.Time{})
		echoes.Go(func() { _, _ = io.Copy(accepted, accepted) })
		streams[i] = opened
	}
	t.Cleanup(func() {
		for _, st := range streams {
			_ = st.CloseWrite()
		}
		echoes.Wait()
	})
	return streams
}

// RequestLoad has every stream send req and read its echo in turn, as
// persistent clients of a request/response service do, until n requests
// have been made in all.
func RequestLoad(b *testing.B, streams []transport.Stream, req []byte, n int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for _, st := range streams {
		wg.Go(func() {
			resp := make([]byte, len(req))
			for next.Add(1) <= int64(n) {
				if _, err := st.Write(req); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(st, resp); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

package transport_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	pinnedtest "github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var transports = []transport.Transport{quic.Transport{}, tlsmux.Transport{}, memtransport.New()}

// requireNoSession fails unless ln hands out no session for a while.
func requireNoSession(t *testing.T, ln transport.Listener) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if s, err := ln.Accept(ctx); !errors.Is(err, context.DeadlineExceeded) {
		if s != nil {
			_ = s.Close()
		}
		t.Fatalf("Accept = %v, %v; want no session", s, err)
	}
}

func TestSessionInfo(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name(), func(t *testing.T) {
			cs, ss := pinnedtest.Stores(t, transporttest.ALPN)
			cc := &transport.Config{TLS: cs.ClientConfig(), Authenticate: transporttest.StoreAuth(cs)}
			sc := &transport.Config{TLS: ss.ServerConfig(), Authenticate: transporttest.StoreAuth(ss)}
			client, server := transporttest.SessionPair(t, tr, cc, sc)
			for _, x := range []struct {
				s    transport.Session
				peer *hybridtls.Store
			}{{client, ss}, {server, cs}} {
				info := x.s.Info()
				if info.Transport != tr.Name() {
					t.Errorf("Info.Transport = %q, want %q", info.Transport, tr.Name())
				}
				if info.TLS.CurveID != tls.X25519MLKEM768 || info.TLS.Version != tls.VersionTLS13 {
					t.Errorf("Info.TLS: group %s, version %#x", hybridtls.GroupName(info.TLS.CurveID), info.TLS.Version)
				}
				if want := x.peer.Authenticator().Name(); info.Peer.Name != want || !info.Peer.PQAuth {
					t.Errorf("Info.Peer = %+v, want %s with PQAuth", info.Peer, want)
				}
				if info.Local == nil || info.Remote == nil || info.Handshake <= 0 {
					t.Errorf("Info addresses %v -> %v, handshake %v", info.Local, info.Remote, info.Handshake)
				}
			}
			// The QUIC dialler binds the unspecified address, so compare ports.
			if lp, rp := port(t, client.Info().Local), port(t, server.Info().Remote); lp != rp {
				t.Errorf("client local %v and server's remote %v differ", client.Info().Local, server.Info().Remote)
			}
		})
	}
}

func port(t *testing.T, a net.Addr) string {
	t.Helper()
	_, p, err := net.SplitHostPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStreamsByteExactBothWays(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name(), func(t *testing.T) {
			cc, sc := transporttest.Configs(t)
			client, server := transporttest.SessionPair(t, tr, cc, sc)
			// One stream opened by each side, both carrying data both ways at once.
			for _, dir := range []struct {
				name     string
				from, to transport.Session
			}{{"client opens", client, server}, {"server opens", server, client}} {
				t.Run(dir.name, func(t *testing.T) {
					a, b := transporttest.OpenAccepted(t, dir.from, dir.to, []byte("hi"))
					up, down := testutil.RandomBytes(t, 2<<20+3), testutil.RandomBytes(t, 1<<20+7)
					var wg sync.WaitGroup
					var gotUp, gotDown []byte
					var errUp, errDown error
					wg.Add(2)
					go func() {
						defer wg.Done()
						gotUp, errUp = io.ReadAll(b)
					}()
					go func() {
						defer wg.Done()
						gotDown, errDown = io.ReadAll(a)
					}()
					writeAndClose := func(s transport.Stream, p []byte) error {
						if _, err := s.Write(p); err != nil {
							return err
						}
						return s.CloseWrite()
					}
					werr := make(chan error, 1)
					go func() { werr <- writeAndClose(b, down) }()
					if err := writeAndClose(a, up); err != nil {
						t.Fatalf("write up: %v", err)
					}
					if err := <-werr; err != nil {
						t.Fatalf("write down: %v", err)
					}
					wg.Wait()
					if errUp != nil || !bytes.Equal(gotUp, up) {
						t.Errorf("up: %d bytes, %v; want %d byte-exact", len(gotUp), errUp, len(up))
					}
					if errDown != nil || !bytes.Equal(gotDown, down) {
						t.Errorf("down: %d bytes, %v; want %d byte-exact", len(gotDown), errDown, len(down))
					}
				})
			}
		})
	}
}

func TestManyConcurrentStreams(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name(), func(t *testing.T) {
			cc, sc := transporttest.Configs(t)
			client, server := transporttest.SessionPair(t, tr, cc, sc)
			ctx := transporttest.Ctx(t)
			// The server echoes every stream.
			var served sync.WaitGroup
			served.Add(1)
			go func() {
				defer served.Done()
				for {
					st, err := server.AcceptStream(ctx)
					if err != nil {
						return
					}
					served.Add(1)
					go func() {
						defer served.Done()
						defer st.Close()
						_ = st.SetDeadline(time.Now().Add(15 * time.Second))
						if _, err := io.Copy(st, st); err == nil {
							_ = st.CloseWrite()
						}
					}()
				}
			}()
			const n = 32
			errs := make(chan error, n)
			var wg sync.WaitGroup
			for range n {
				payload := testutil.RandomBytes(t, 100<<10)
				wg.Add(1)
				go func() {
					defer wg.Done()
					st, err := client.OpenStream(ctx)
					if err != nil {
						errs <- err
						return
					}
					defer st.Close()
					_ = st.SetDeadline(time.Now().Add(15 * time.Second))
					go func() {
						if _, err := st.Write(payload); err == nil {
							_ = st.CloseWrite()
						}
					}()
					got, err := io.ReadAll(st)
					if err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(got, payload) {
						errs <- errors.New("echo not byte-exact")
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			_ = client.Close()
			_ = server.Close()
			served.Wait()
		})
	}
}

func TestCloseWriteHalfClose(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name(), func(t *testing.T) {
			cc, sc := transporttest.Configs(t)
			client, server := transporttest.SessionPair(t, tr, cc, sc)
			a, b := transporttest.OpenAccepted(t, client, server, []byte("request"))
			if err := a.CloseWrite(); err != nil {
				t.Fatalf("CloseWrite: %v", err)
			}
			rest, err := io.ReadAll(b)
			if err != nil || len(rest) != 0 {
				t.Fatalf("peer read %q, %v after CloseWrite; want EOF", rest, err)
			}
			// The reverse direction still flows.
			reply := testutil.RandomBytes(t, 512<<10)
			go func() {
				if _, err := b.Write(reply); err == nil {
					_ = b.CloseWrite()
				}
			}()
			got, err := io.ReadAll(a)
			if err != nil || !bytes.Equal(got, reply) {
				t.Fatalf("reverse direction: %d bytes, %v; want %d byte-exact", len(got), err, len(reply))
			}
			if _, err := a.Write([]byte("x")); err == nil {
				t.Error("Write after CloseWrite succeeded")
			}
		})
	}
}

func TestResetReachesPeerPromptly(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name(), func(t *testing.T) {
			cc, sc := transporttest.Configs(t)
			client, server := transporttest.SessionPair(t, tr, cc, sc)
			a, b := transporttest.OpenAccepted(t, client, server, []byte("x"))
			_ = b.SetReadDeadline(time.Now().Add(2 * time.Second))
			readErr := make(chan error, 1)
			go func() {
				_, err := io.ReadAll(b) // blocks until the reset arrives
				readErr <- err
			}()
			a.Reset()
			err := <-readErr
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("peer's Read was not ended by Reset: %v", err)
			}
			if tr.Name() == quic.Name && err == nil {
				// QUIC has a real reset: the peer sees an error, not EOF.
				t.Fatal("peer read a clean EOF after Reset")
			}
			if _, err := a.Write([]byte("more")); err == nil {
				t.Error("Write on a reset stream succeeded")
			}
		})
	}
}

var (
	errClientRefuses = errors.New("test: client refuses")
	errServerRefuses = errors.New("test: server refuses")
)

// tokenAuth is a tiny authenticator: the client sends "hi", the server
// answers "ok". Each side fails with its error when told to, before sending.
func tokenAuth(fail error) transport.Authenticator {
	return func(_ *tls.ConnectionState, rw io.ReadWriter, client bool) (transport.Peer, error) {
		buf := make([]byte, 2)
		if client {
			if fail != nil {
				return transport.Peer{}, fail
			}
			if _, err := rw.Write([]byte("hi")); err != nil {
				return transport.Peer{}, err
			}
			if _, err := io.ReadFull(rw, buf); err != nil {
				return transport.Peer{}, err
			}
			if string(buf) != "ok" {
				return transport.Peer{}, errors.New("bad answer")
			}
			return transport.Peer{Name: "server"}, nil
		}
		if _, err := io.ReadFull(rw, buf); err != nil {
			return transport.Peer{}, err
		}
		if fail != nil {
			return transport.Peer{}, fail
		}
		if _, err := rw.Write([]byte("ok")); err != nil {
			return transport.Peer{}, err
		}
		return transport.Peer{Name: "client"}, nil
	}
}

func TestAuthenticatorErrorFailsHandshake(t *testing.T) {
	for _, tr := range transports {
		for _, failing := range []string{"client", "server"} {
			t.Run(tr.Name()+"/"+failing, func(t *testing.T) {
				cs, ss := pinnedtest.Stores(t, transporttest.ALPN)
				var clientFail, serverFail error
				if failing == "client" {
					clientFail = errClientRefuses
				} else {
					serverFail = errServerRefuses
				}
				failed := make(chan error, 4)
				sc := &transport.Config{TLS: ss.ServerConfig(), Authenticate: tokenAuth(serverFail), HandshakeTimeout: 10 * time.Second,
					OnHandshakeError: func(_ net.Addr, err error) { failed <- err }}
				cc := &transport.Config{TLS: cs.ClientConfig(), Authenticate: tokenAuth(clientFail), HandshakeTimeout: 10 * time.Second}
				ln := transporttest.Listen(t, tr, sc)

				s, err := tr.Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
				if err == nil {
					_ = s.Close()
					t.Fatal("Dial succeeded although the authenticator refused")
				}
				if failing == "client" && !errors.Is(err, errClientRefuses) {
					t.Errorf("Dial error = %v, want the authenticator's error", err)
				}
				// A QUIC client that gives up right after its handshake may
				// close before its Finished reaches the server; quic-go then
				// drops the connection itself and the listener never sees it.
				if tr.Name() == tlsmux.Name || failing == "server" {
					select {
					case herr := <-failed:
						if failing == "server" && !errors.Is(herr, errServerRefuses) {
							t.Errorf("OnHandshakeError got %v, want the server authenticator's error", herr)
						}
					case <-time.After(10 * time.Second):
						t.Fatal("OnHandshakeError was not called")
					}
				}
				// The refused session is never handed to Accept.
				requireNoSession(t, ln)
			})
		}
	}
}

// A dial whose context ends while the peer has not yet proven itself ends
// at once, not when HandshakeTimeout runs out: a successor dialled for a
// connection that went away meanwhile, over a path that just went dark,
// must not hold the old connection's end back for the whole timeout.
func TestDialEndsWithItsContextDuringAuthentication(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name(), func(t *testing.T) {
			cs, ss := pinnedtest.Stores(t, transporttest.ALPN)
			entered := make(chan struct{}, 1)
			release := make(chan struct{})
			silent := func(_ *tls.ConnectionState, _ io.ReadWriter, _ bool) (transport.Peer, error) {
				entered <- struct{}{}
				<-release // never proves itself while the dial waits
				return transport.Peer{}, errServerRefuses
			}
			sc := &transport.Config{TLS: ss.ServerConfig(), Authenticate: silent, HandshakeTimeout: 30 * time.Second}
			cc := &transport.Config{TLS: cs.ClientConfig(), Authenticate: tokenAuth(nil), HandshakeTimeout: 30 * time.Second}
			ln := transporttest.Listen(t, tr, sc)
			t.Cleanup(func() { close(release) }) // before the listener's Close, which waits for it
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
				defer cancel()
				if s, err := ln.Accept(ctx); err == nil {
					_ = s.Close()
				}
			}()

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type result struct {
				s   transport.Session
				err error
			}
			dialled := make(chan result, 1)
			go func() {
				s, err := tr.Dial(ctx, ln.Addr().String(), cc)
				dialled <- result{s, err}
			}()
			select {
			case <-entered:
			case <-time.After(10 * time.Second):
				t.Fatal("the listener never began to authenticate the dial")
			}
			cancel()
			cancelled := time.Now()
			select {
			case r := <-dialled:
				if r.err == nil {
					_ = r.s.Close()
					t.Fatal("Dial succeeded although the peer never proved itself")
				}
				if took := time.Since(cancelled); took > 2*time.Second {
					t.Errorf("Dial ended %s after its context, want at once", took)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Dial still waits 10 s after its context ended")
			}
		})
	}
}

// A peer whose pin is not accepted fails inside the TLS handshake. Over TCP
// the listener reports it through OnHandshakeError; over QUIC it happens
// inside quic-go, so the Store reports it through Policy.OnRefused.
func TestHybridAuthRefusesUnknownPeer(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name(), func(t *testing.T) {
			cs, good := pinnedtest.Stores(t, transporttest.ALPN)
			stranger, err := pinned.GenerateIdentity()
			if err != nil {
				t.Fatal(err)
			}
			// The client accepts the server; the server accepts only a stranger.
			refused := make(chan string, 4)
			ss, err := hybridtls.NewStore(hybridtls.Policy{Mode: hybridtls.Strict, Groups: hybridtls.DefaultGroups, ALPN: transporttest.ALPN,
				OnRefused: func(reason string) { refused <- reason }},
				&pinned.Authenticator{Identity: good.Authenticator().(*pinned.Authenticator).Identity, Peers: []pinned.Pin{stranger.Pin}})
			if err != nil {
				t.Fatal(err)
			}
			failed := make(chan error, 4)
			sc := &transport.Config{TLS: ss.ServerConfig(), Authenticate: transporttest.StoreAuth(ss),
				OnHandshakeError: func(_ net.Addr, err error) { failed <- err }}
			cc := &transport.Config{TLS: cs.ClientConfig(), Authenticate: transporttest.StoreAuth(cs)}
			ln := transporttest.Listen(t, tr, sc)
			start := time.Now()
			if s, err := tr.Dial(transporttest.Ctx(t), ln.Addr().String(), cc); err == nil {
				_ = s.Close()
				t.Fatal("Dial succeeded between strangers")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("refused Dial took %v", d)
			}
			select {
			case reason := <-refused:
				if reason != "peer_not_allowed" {
					t.Errorf("OnRefused reason = %q, want peer_not_allowed", reason)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the server store did not report the refusal")
			}
			if tr.Name() == tlsmux.Name {
				select {
				case err := <-failed:
					if !errors.Is(err, auth.ErrPeerNotAllowed) {
						t.Errorf("OnHandshakeError got %v, want ErrPeerNotAllowed", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("OnHandshakeError was not called")
				}
			}
			requireNoSession(t, ln)
		})
	}
}

func TestQUICMaxStreams(t *testing.T) {
	const limit = 4
	cc, sc := transporttest.Configs(t)
	sc.MaxStreams = limit
	client, server := transporttest.SessionPair(t, quic.Transport{}, cc, sc)

	var open []transport.Stream
	for i := range limit {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := client.OpenStream(ctx)
		cancel()
		if err != nil {
			t.Fatalf("OpenStream %d of %d: %v", i+1, limit, err)
		}
		open = append(open, st)
		t.Cleanup(func() { st.Reset() })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	st, err := client.OpenStream(ctx)
	cancel()
	if err == nil {
		st.Reset()
		t.Fatalf("OpenStream %d succeeded past MaxStreams=%d", limit+1, limit)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("OpenStream past the limit = %v, want it to block until the deadline", err)
	}

	// Finishing one stream on both sides gives the slot back.
	waiting := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := client.OpenStream(ctx)
		if err == nil {
			st.Reset()
		}
		waiting <- err
	}()
	first := open[0]
	if _, err := first.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := first.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	acc, err := server.AcceptStream(transporttest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	_ = acc.SetDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(acc); err != nil || string(b) != "x" {
		t.Fatalf("server read %q, %v", b, err)
	}
	if err := acc.Close(); err != nil {
		t.Fatal(err)
	}
	_ = first.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(first); err != nil {
		t.Fatalf("client read of the finished stream: %v", err)
	}
	if err := <-waiting; err != nil {
		t.Fatalf("OpenStream after a stream finished: %v", err)
	}
}

func TestTCPHandshakeTimeout(t *testing.T) {
	_, sc := transporttest.Configs(t)
	sc.HandshakeTimeout = 300 * time.Millisecond
	type failure struct {
		remote net.Addr
		err    error
	}
	failed := make(chan failure, 4)
	sc.OnHandshakeError = func(remote net.Addr, err error) { failed <- failure{remote, err} }
	ln := transporttest.Listen(t, tlsmux.Transport{}, sc)

	start := time.Now()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1)) // we send nothing; the listener must cut us off
	elapsed := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("a silent peer was not cut off")
	}
	if err == nil {
		t.Fatalf("read %d bytes from a server waiting for our hello", n)
	}
	if elapsed < 300*time.Millisecond {
		t.Errorf("cut off after %v, before HandshakeTimeout", elapsed)
	}
	select {
	case f := <-failed:
		if f.err == nil {
			t.Error("OnHandshakeError called with a nil error")
		}
		if f.remote.String() != c.LocalAddr().String() {
			t.Errorf("OnHandshakeError remote = %v, want %v", f.remote, c.LocalAddr())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnHandshakeError was not called")
	}
}

func TestListenerCloseEndsAccept(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name(), func(t *testing.T) {
			_, sc := transporttest.Configs(t)
			ln := transporttest.Listen(t, tr, sc)
			errc := make(chan error, 1)
			go func() {
				_, err := ln.Accept(context.Background())
				errc <- err
			}()
			if err := ln.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			select {
			case err := <-errc:
				if !errors.Is(err, transport.ErrClosed) {
					t.Fatalf("blocked Accept = %v, want transport.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not end a blocked Accept")
			}
			if _, err := ln.Accept(context.Background()); !errors.Is(err, transport.ErrClosed) {
				t.Fatalf("Accept after Close = %v, want transport.ErrClosed", err)
			}
			_ = ln.Close() // idempotent: must not panic or hang
		})
	}
}

func TestAcceptHonoursContext(t *testing.T) {
	_, sc := transporttest.Configs(t)
	ln := transporttest.Listen(t, tlsmux.Transport{}, sc)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ln.Accept(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Accept with a cancelled context = %v", err)
	}
}

// Accepting with a context that cannot end takes the direct path; streams
// accepted that way and through a cancellable context must both arrive.
func TestAcceptWithAndWithoutContext(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name(), func(t *testing.T) {
			cc, sc := transporttest.Configs(t)
			client, server := transporttest.SessionPair(t, tr, cc, sc)
			ctx := transporttest.Ctx(t)
			for i, actx := range []context.Context{context.Background(), ctx, context.Background()} {
				st, err := client.OpenStream(ctx)
				if err != nil {
					t.Fatalf("open %d: %v", i, err)
				}
				defer st.Close()
				if _, err := st.Write([]byte{byte(i)}); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				acc, err := server.AcceptStream(actx)
				if err != nil {
					t.Fatalf("accept %d: %v", i, err)
				}
				defer acc.Close()
				var b [1]byte
				if _, err := io.ReadFull(acc, b[:]); err != nil || b[0] != byte(i) {
					t.Fatalf("stream %d read %v, %v", i, b[0], err)
				}
			}
			_ = client.Close()
			if _, err := server.AcceptStream(context.Background()); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("accept after the peer closed = %v, want net.ErrClosed", err)
			}
		})
	}
}

func TestSessionCloseReachesPeer(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name(), func(t *testing.T) {
			cc, sc := transporttest.Configs(t)
			client, server := transporttest.SessionPair(t, tr, cc, sc)
			acceptErr := make(chan error, 1)
			go func() {
				_, err := server.AcceptStream(context.Background())
				acceptErr <- err
			}()
			if err := client.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			for _, s := range []transport.Session{client, server} {
				select {
				case <-s.Done():
				case <-time.After(5 * time.Second):
					t.Fatal("Done not closed after the session closed")
				}
			}
			select {
			case err := <-acceptErr:
				if err == nil {
					t.Fatal("AcceptStream returned a stream on a closed session")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("AcceptStream blocked after the peer closed")
			}
		})
	}
}

package hybridtls

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
)

// BenchmarkHandshake is one full tunnel establishment per op: the TLS 1.3
// handshake offering exactly one group, then Authenticate on both sides
// (ML-DSA-65 CertificateVerify and Ed25519 proofs both ways), over an in-memory pipe. For each hybrid
// group the same number of X25519 handshakes follows, and x-X25519 is the
// group's time over X25519's (1 = as fast as classical).
func BenchmarkHandshake(b *testing.B) {
	serverID, err := pinned.GenerateIdentity()
	if err != nil {
		b.Fatal(err)
	}
	clientID, err := pinned.GenerateIdentity()
	if err != nil {
		b.Fatal(err)
	}
	// The server accepts every group, classical X25519 too, like a listen
	// side with PQT_PQ=prefer.
	server, err := NewStore(Policy{Mode: Prefer, Groups: DefaultGroups, ALPN: "pqtunnel-bench/1"},
		&pinned.Authenticator{Identity: serverID, Peers: []pinned.Pin{clientID.Pin}})
	if err != nil {
		b.Fatal(err)
	}
	clientFor := func(g tls.CurveID) *Store {
		mode := Strict
		if !IsHybrid(g) {
			mode = Prefer
		}
		s, err := NewStore(Policy{Mode: mode, Groups: []tls.CurveID{g}, ALPN: "pqtunnel-bench/1"},
			&pinned.Authenticator{Identity: clientID, Peers: []pinned.Pin{serverID.Pin}})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	classical := clientFor(tls.X25519)
	for _, g := range []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024, tls.X25519} {
		client := clientFor(g)
		b.Run(GroupName(g), func(b *testing.B) {
			b.ReportAllocs()
			start := time.Now()
			n := 0
			for b.Loop() {
				benchEstablish(b, client, server, g)
				n++
			}
			elapsed := time.Since(start)
			if g == tls.X25519 {
				return
			}
			start = time.Now()
			for range n {
				benchEstablish(b, classical, server, tls.X25519)
			}
			b.ReportMetric(elapsed.Seconds()/time.Since(start).Seconds(), "x-X25519")
		})
	}
}

// benchEstablish runs one handshake and both proofs and checks the group.
func benchEstablish(b *testing.B, client, server *Store, want tls.CurveID) {
	cc, sc := benchPipe()
	defer cc.Close()
	defer sc.Close()
	var serr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s := tls.Server(sc, server.ServerConfig())
		if serr = s.Handshake(); serr != nil {
			_ = sc.Close() // unblocks the client
			return
		}
		cs := s.ConnectionState()
		if _, serr = server.Authenticate(&cs, s, RoleServer); serr != nil {
			_ = sc.Close()
		}
	}()
	c := tls.Client(cc, client.ClientConfig())
	err := c.Handshake()
	var cs tls.ConnectionState
	if err == nil {
		cs = c.ConnectionState()
		_, err = client.Authenticate(&cs, c, RoleClient)
	}
	if err != nil {
		_ = cc.Close() // unblocks the server
	}
	wg.Wait()
	if err != nil || serr != nil {
		b.Fatalf("establish with %s: client: %v; server: %v", GroupName(want), err, serr)
	}
	if cs.CurveID != want {
		b.Fatalf("negotiated %s, want %s", GroupName(cs.CurveID), GroupName(want))
	}
}

// benchPipe is net.Pipe with buffering: both sides write their proof before
// reading the peer's, which net.Pipe's synchronous writes would deadlock on.
func benchPipe() (net.Conn, net.Conn) {
	ab, ba := newBenchQueue(), newBenchQueue()
	return &benchPipeEnd{r: ba, w: ab}, &benchPipeEnd{r: ab, w: ba}
}

// benchQueue is one direction of a benchPipe.
type benchQueue struct {
	mu     sync.Mutex
	more   *sync.Cond
	buf    []byte
	closed bool
}

func newBenchQueue() *benchQueue {
	q := &benchQueue{}
	q.more = sync.NewCond(&q.mu)
	return q
}

func (q *benchQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.more.Broadcast()
}

type benchPipeEnd struct{ r, w *benchQueue }

func (p *benchPipeEnd) Read(b []byte) (int, error) {
	q := p.r
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.buf) == 0 && !q.closed {
		q.more.Wait()
	}
	if len(q.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(b, q.buf)
	q.buf = q.buf[n:]
	return n, nil
}

func (p *benchPipeEnd) Write(b []byte) (int, error) {
	q := p.w
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, io.ErrClosedPipe
	}
	q.buf = append(q.buf, b...)
	q.more.Broadcast()
	return len(b), nil
}

func (p *benchPipeEnd) Close() error {
	p.r.close()
	p.w.close()
	return nil
}

type benchAddr struct{}

func (benchAddr) Network() string { return "pipe" }
func (benchAddr) String() string  { return "pipe" }

func (p *benchPipeEnd) LocalAddr() net.Addr              { return benchAddr{} }
func (p *benchPipeEnd) RemoteAddr() net.Addr             { return benchAddr{} }
func (p *benchPipeEnd) SetDeadline(time.Time) error      { return nil }
func (p *benchPipeEnd) SetReadDeadline(time.Time) error  { return nil }
func (p *benchPipeEnd) SetWriteDeadline(time.Time) error { return nil }

package quic

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// retryCounter counts the Retry packets a client socket receives.
type retryCounter struct {
	net.PacketConn
	retries *atomic.Int32
}

func (r *retryCounter) ReadFrom(p []byte) (int, net.Addr, error) {
	n, addr, err := r.PacketConn.ReadFrom(p)
	// A QUIC v1 long header whose packet type (bits 4 and 5) is 3 is a Retry.
	if n > 0 && p[0]&0x80 != 0 && (p[0]>>4)&3 == 3 {
		r.retries.Add(1)
	}
	return n, addr, err
}

// stalledClient starts QUIC handshakes from its own source IP, each from
// a new socket, that stall after the server's first flight: certificate
// verification blocks until the test ends, as an attacker who never sends
// its Finished.
type stalledClient struct {
	t       *testing.T
	ip      string
	retries atomic.Int32
	wg      sync.WaitGroup
	errs    chan error
	unhold  chan struct{}
}

func newStalledClient(t *testing.T, ip string) *stalledClient {
	sc := &stalledClient{t: t, ip: ip, errs: make(chan error, 64), unhold: make(chan struct{})}
	t.Cleanup(func() {
		close(sc.unhold)
		sc.wg.Wait()
	})
	return sc
}

func (sc *stalledClient) start(ctx context.Context, addr net.Addr) {
	pc, err := net.ListenPacket("udp", net.JoinHostPort(sc.ip, "0"))
	if err != nil {
		sc.t.Fatal(err)
	}
	sock := &retryCounter{PacketConn: pc, retries: &sc.retries}
	tr := &quic.Transport{Conn: sock}
	tc := &tls.Config{
		InsecureSkipVerify: true, // the handshake never gets as far as trusting anyone
		NextProtos:         []string{transporttest.ALPN},
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519MLKEM768},
		VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error {
			<-sc.unhold
			return errors.New("stalled client gives up")
		},
	}
	sc.wg.Add(1)
	go func() {
		defer sc.wg.Done()
		conn, err := tr.Dial(ctx, addr, tc, &quic.Config{HandshakeIdleTimeout: time.Minute})
		if err == nil {
			_ = conn.CloseWithError(0, "")
		}
		_ = tr.Close()
		_ = pc.Close()
		sc.errs <- err
	}()
}

type failure struct {
	reason transport.Reason
	at     time.Time
}

// A QUIC handshake takes a slot with its first packet: one source gets a
// quarter of the slots and the listener MaxHandshakes, the rest are refused
// at once as busy; while a handshake is in progress new connections get a
// Retry first (the first on an idle listener does not);
// stalled handshakes end and are reported at HandshakeTimeout; a
// legitimate peer connects meanwhile.
func TestHandshakeSlotsFromTheFirstPacket(t *testing.T) {
	const timeout = 2 * time.Second
	cc, sc := transporttest.Configs(t)
	sc.MaxHandshakes = 8 // two per source address
	sc.HandshakeTimeout = timeout
	failures := make(chan failure, 64)
	sc.OnHandshakeError = func(_ net.Addr, err error) { failures <- failure{transport.Classify(err), time.Now()} }
	ln := transporttest.Listen(t, Transport{}, sc)
	ctx := transporttest.Ctx(t)
	addr := ln.Addr()

	// Source 127.0.0.2 tries four: two hold slots, two are refused at once.
	first := newStalledClient(t, "127.0.0.2")
	start := time.Now()
	for range 4 {
		first.start(ctx, addr)
	}
	for range 2 {
		select {
		case err := <-first.errs:
			if transport.Classify(handshakeError(transport.StageTLS, err)) != transport.ReasonBusy {
				t.Errorf("refused stalled client got %v, want a busy refusal", err)
			}
		case <-time.After(time.Second):
			t.Fatal("a source past its quarter of the slots was not refused at once")
		}
	}
	// Two more sources fill the slots; with handshakes in progress, they must answer a Retry.
	others := []*stalledClient{newStalledClient(t, "127.0.0.3"), newStalledClient(t, "127.0.0.4")}
	for _, o := range others {
		o.start(ctx, addr)
		o.start(ctx, addr)
	}
	for i := range 2 {
		f := <-failures
		if f.reason != transport.ReasonBusy || f.at.Sub(start) > time.Second {
			t.Errorf("failure %d: %s after %s, want busy at once", i, f.reason, f.at.Sub(start))
		}
	}
	deadline := time.Now().Add(time.Second)
	for others[0].retries.Load()+others[1].retries.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling a counter the client's socket bumps
	}
	if first.retries.Load() == 0 {
		t.Error("the first source's connections started while its first was in progress got no Retry")
	}
	if others[0].retries.Load()+others[1].retries.Load() == 0 {
		t.Error("no Retry was sent with handshakes in progress")
	}

	// A legitimate peer from 127.0.0.1 still gets the remaining slots.
	dctx, cancel := context.WithTimeout(ctx, timeout/2)
	s, err := Dial(dctx, addr.String(), cc)
	cancel()
	if err != nil {
		t.Fatalf("legitimate dial during the stall: %v", err)
	}
	_ = s.Close()

	// The six stalled handshakes end at the timeout, each reported once.
	for i := range 6 {
		select {
		case f := <-failures:
			if took := f.at.Sub(start); f.reason != transport.ReasonTimeout || took > timeout*5/4 {
				t.Errorf("stalled handshake %d: %s after %s, want timeout within %s", i, f.reason, took, timeout)
			}
		case <-time.After(2 * timeout):
			t.Fatalf("only %d of 6 stalled handshakes were reported", i)
		}
	}
	select {
	case f := <-failures:
		t.Errorf("unexpected further failure %s", f.reason)
	case <-time.After(200 * time.Millisecond):
	}
}

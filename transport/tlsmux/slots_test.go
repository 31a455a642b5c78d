package tlsmux

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// idleConn connects from ip to addr, sends first, and returns how long
// the listener took to close it (capped at limit).
func idleConn(t *testing.T, ip string, addr net.Addr, first []byte, limit time.Duration, closed chan<- time.Duration) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Write(first); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer c.Close()
		_ = c.SetReadDeadline(start.Add(limit))
		_, err := io.Copy(io.Discard, c)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			closed <- limit
			return
		}
		closed <- time.Since(start)
	}()
}

// A socket that sends no complete first record gives its handshake slot
// back after firstRecordTimeout, not HandshakeTimeout, and one source IP
// holds at most a quarter of the slots: a legitimate peer connects while
// idle sockets from another address are open.
func TestIdleSocketsFreeTheirSlots(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	sc.MaxHandshakes = 8 // two per source address
	sc.HandshakeTimeout = 10 * time.Second
	failures := make(chan transport.Reason, 16)
	sc.OnHandshakeError = func(_ net.Addr, err error) { failures <- transport.Classify(err) }
	ln := transporttest.Listen(t, Transport{}, sc)
	const limit = 5 * time.Second
	closed := make(chan time.Duration, 4)
	idleConn(t, "127.0.0.2", ln.Addr(), nil, limit, closed)
	idleConn(t, "127.0.0.2", ln.Addr(), []byte{22, 3, 1}, limit, closed) // a record header cut short
	// The accept loop takes slots in the order the kernel queued the
	// connections, so the third is the one refused.
	idleConn(t, "127.0.0.2", ln.Addr(), nil, limit, closed)
	if took := <-closed; took > time.Second {
		t.Errorf("the third socket from one address was closed after %s, want at once (busy)", took)
	}
	if r := <-failures; r != transport.ReasonBusy {
		t.Errorf("first failure %s, want busy", r)
	}

	start := time.Now()
	s, err := Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err != nil {
		t.Fatalf("legitimate dial beside idle sockets: %v", err)
	}
	_ = s.Close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("legitimate dial took %s", took)
	}

	for range 2 {
		if took := <-closed; took < firstRecordTimeout-200*time.Millisecond || took > firstRecordTimeout+time.Second {
			t.Errorf("an idle socket was closed after %s, want about %s", took, firstRecordTimeout)
		}
		if r := <-failures; r != transport.ReasonTimeout {
			t.Errorf("idle socket failure %s, want timeout", r)
		}
	}
}

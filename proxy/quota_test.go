package proxy

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

func TestQuota(t *testing.T) {
	var q quota[string]
	for i := range 3 {
		if !q.take("a", 3) {
			t.Fatalf("take %d of 3 refused", i+1)
		}
	}
	if q.take("a", 3) {
		t.Error("a fourth take under a limit of 3 succeeded")
	}
	if !q.take("b", 3) {
		t.Error("another key was refused while a held its limit")
	}
	q.give("a")
	if !q.take("a", 3) {
		t.Error("take after give refused")
	}
	for range 3 {
		q.give("a")
	}
	q.give("b")
	if len(q.held) != 0 {
		t.Errorf("keys holding nothing are kept: %v", q.held)
	}
	for range 100 {
		if !q.take("c", 0) {
			t.Fatal("limit 0 refused: it means no bound")
		}
	}
	if q.count("c") != 100 {
		t.Errorf("count = %d, want 100", q.count("c"))
	}
}

func TestClientKey(t *testing.T) {
	for _, tt := range []struct{ addr, want string }{
		{"192.0.2.1:5000", "192.0.2.1/32"},
		{"[::ffff:192.0.2.1]:5000", "192.0.2.1/32"},
		{"[2001:db8:1:2:3:4:5:6]:5000", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff::1]:5001", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:22", "fe80::/64"},
	} {
		a := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tt.addr))
		if got := clientKey(a).String(); got != tt.want {
			t.Errorf("clientKey(%s) = %s, want %s", tt.addr, got, tt.want)
		}
	}
	if got := clientKey(&net.UnixAddr{Name: "/x"}); got.IsValid() {
		t.Errorf("clientKey of a non-IP address = %s, want the zero key", got)
	}
}

func TestShare(t *testing.T) {
	for _, tt := range []struct{ total, percent, want int }{
		{256, 50, 128}, {65536, 25, 16384}, {1, 50, 1}, {3, 50, 1}, {4, 50, 2}, {10, 100, 10}, {-1, 50, -1}, {0, 50, 0},
	} {
		if got := share(tt.total, tt.percent); got != tt.want {
			t.Errorf("share(%d, %d) = %d, want %d", tt.total, tt.percent, got, tt.want)
		}
	}
}

func TestConfigDefaultsQuotas(t *testing.T) {
	c := Config{}.withDefaults()
	if c.MaxClientsPerIP != 16384 || c.PeerShare != 50 {
		t.Errorf("defaults: MaxClientsPerIP %d, PeerShare %d; want 16384, 50", c.MaxClientsPerIP, c.PeerShare)
	}
	c = Config{MaxTotalStreams: -1, PeerShare: 150}.withDefaults()
	if c.MaxClientsPerIP != -1 || c.PeerShare != 100 {
		t.Errorf("unbounded streams: MaxClientsPerIP %d, PeerShare %d; want -1, 100", c.MaxClientsPerIP, c.PeerShare)
	}
	if c := (Config{MaxTotalStreams: 40, MaxClientsPerIP: 3}).withDefaults(); c.MaxClientsPerIP != 3 {
		t.Errorf("an explicit MaxClientsPerIP became %d", c.MaxClientsPerIP)
	}
}

// A stream silent both ways for the idle timeout is aborted with
// errStreamIdle; one that moves a byte more often than that is not.
func TestJoinIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	t.Run("silent", func(t *testing.T) {
		clientA, proxyA := testutil.TCPPair(t)
		proxyB, originB := testutil.TCPPair(t)
		defer clientA.Close()
		defer originB.Close()
		start := time.Now()
		_, _, err := join(sockEnd{proxyA}, sockEnd{proxyB}, idle)
		elapsed := time.Since(start)
		if !errors.Is(err, errStreamIdle) {
			t.Fatalf("join = %v, want errStreamIdle", err)
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
		go func() { _, _, err := join(sockEnd{proxyA}, sockEnd{proxyB}, idle); done <- err }()
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

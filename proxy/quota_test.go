package proxy

import (
	"net"
	"net/netip"
	"testing"
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

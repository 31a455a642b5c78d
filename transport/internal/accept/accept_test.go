package accept

import (
	"net"
	"testing"
)

func TestAcquireBoundsSlotsInAllAndPerSource(t *testing.T) {
	a := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 1} }
	l := New(8) // two per source
	var releases []func()
	take := func(remote net.Addr, want bool) {
		t.Helper()
		r, ok := l.Acquire(remote)
		if ok != want {
			t.Fatalf("Acquire(%s) with %d in use = %v, want %v", remote, l.InUse(), ok, want)
		}
		if ok {
			releases = append(releases, r)
		}
	}
	take(a("192.0.2.1"), true)
	take(a("192.0.2.1"), true)
	take(a("192.0.2.1"), false)
	take(&net.UDPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 2}, false) // the same IPv4 address, mapped
	take(a("192.0.2.2"), true)
	take(a("2001:db8::1"), true)
	take(a("2001:db8::1"), true)
	take(a("2001:db8::2"), true)
	take(a("2001:db8::3"), true)
	take(a("2001:db8::4"), true)
	take(a("2001:db8::5"), false) // all eight taken
	releases[0]()
	releases[0]() // a second call frees nothing more
	take(a("192.0.2.1"), true)
	take(a("2001:db8::5"), false)
	if l.InUse() != 8 {
		t.Errorf("InUse = %d, want 8", l.InUse())
	}
	for _, r := range releases {
		r()
	}
	if l.InUse() != 0 || len(l.bySource) != 0 {
		t.Errorf("after every release: %d in use, %d sources tracked", l.InUse(), len(l.bySource))
	}
}

func TestAcquireWithoutAnIPAddressCountsOnlyTheTotal(t *testing.T) {
	l := New(4)
	for i := range 4 {
		if _, ok := l.Acquire(&net.UnixAddr{Name: "x"}); !ok {
			t.Fatalf("slot %d refused", i)
		}
	}
	if _, ok := l.Acquire(&net.UnixAddr{Name: "x"}); ok {
		t.Error("a fifth slot of four was granted")
	}
}

func TestPerSourceShare(t *testing.T) {
	for _, tt := range []struct{ max, want int }{{1, 1}, {2, 2}, {4, 2}, {8, 2}, {64, 16}, {100, 25}} {
		if got := New(tt.max).perSource; got != tt.want {
			t.Errorf("New(%d): %d per source, want %d", tt.max, got, tt.want)
		}
	}
}

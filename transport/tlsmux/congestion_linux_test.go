package tlsmux

import (
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// capturingListener remembers the connections it accepts.
type capturingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *capturingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

// sockopt runs f (a get or a set of option name) on c's socket, failing
// the test if it fails.
func sockopt(t *testing.T, c net.Conn, name string, f func(fd int) error) {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var gerr error
	if err := rc.Control(func(fd uintptr) { gerr = f(int(fd)) }); err != nil || gerr != nil {
		t.Fatalf("%s: %v %v", name, err, gerr)
	}
}

func congestionOf(t *testing.T, c net.Conn) string {
	t.Helper()
	var name string
	sockopt(t, c, "TCP_CONGESTION", func(fd int) (err error) {
		name, err = unix.GetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION)
		return err
	})
	return name
}

// TCPCongestion reaches both ends' sockets: one the kernel offers that is
// not its default is what each tunnel socket then uses.
func TestTCPCongestionIsSetOnBothSockets(t *testing.T) {
	avail, err := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
	if err != nil {
		t.Skipf("no congestion controls to read: %v", err)
	}
	def, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	if err != nil {
		t.Skipf("no default congestion control to read: %v", err)
	}
	i := slices.IndexFunc(strings.Fields(string(avail)), func(s string) bool { return s != strings.TrimSpace(string(def)) })
	if i < 0 {
		t.Skip("the kernel offers only its default congestion control")
	}
	want := strings.Fields(string(avail))[i]
	cc, sc := transporttest.Configs(t)
	cc.TCPCongestion, sc.TCPCongestion = want, want
	expectCongestion(t, cc, sc, want)
}

// With no congestion control named, the tunnel's sockets use
// transport.DefaultTCPCongestion where this process may set it, and the
// kernel's default otherwise.
func TestTCPCongestionDefaultsToBBRWhereOffered(t *testing.T) {
	def, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	if err != nil {
		t.Skipf("no default congestion control to read: %v", err)
	}
	want := strings.TrimSpace(string(def))
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := probe.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, transport.DefaultTCPCongestion)
	}); err != nil {
		t.Fatal(err)
	}
	_ = probe.Close() // it only asked the kernel
	if got := congestionFor(&transport.Config{}); got != "bbr" {
		t.Errorf("with none named, the sockets ask for %q, want bbr", got)
	}
	if serr == nil {
		want = transport.DefaultTCPCongestion
	}
	cc, sc := transporttest.Configs(t)
	expectCongestion(t, cc, sc, want)
}

// notSentLowWaterOf reads c's TCP_NOTSENT_LOWAT.
func notSentLowWaterOf(t *testing.T, c net.Conn) int {
	t.Helper()
	var v int
	sockopt(t, c, "TCP_NOTSENT_LOWAT", func(fd int) (err error) {
		v, err = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
		return err
	})
	return v
}

// expectCongestion connects a session with the client and server
// configurations and checks that both of its sockets use want, and, over
// loopback, leave their unsent bytes unbounded (boundsUnsent).
func expectCongestion(t *testing.T, cc, sc *transport.Config, want string) {
	t.Helper()
	var dialled net.Conn
	cc.WrapConn = func(c net.Conn) net.Conn { dialled = c; return c }
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &capturingListener{Listener: raw}
	ln := Listen(cl, sc)
	defer ln.Close()
	s, err := Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := congestionOf(t, dialled); got != want {
		t.Errorf("dialled socket uses %q, want %q", got, want)
	}
	if got := notSentLowWaterOf(t, dialled); got == notSentLowWater {
		t.Errorf("dialled loopback socket's TCP_NOTSENT_LOWAT is %d, want it unset", got)
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if len(cl.conns) != 1 {
		t.Fatalf("listener accepted %d connections, want 1", len(cl.conns))
	}
	if got := congestionOf(t, cl.conns[0]); got != want {
		t.Errorf("accepted socket uses %q, want %q", got, want)
	}
	if got := notSentLowWaterOf(t, cl.conns[0]); got == notSentLowWater {
		t.Errorf("accepted loopback socket's TCP_NOTSENT_LOWAT is %d, want it unset", got)
	}
}

// A tunnel socket over a path of a millisecond or more holds at most
// notSentLowWater bytes unsent; one over loopback is left alone.
func TestUnsentBytesAreBoundedOnLongerPaths(t *testing.T) {
	for _, tc := range []struct {
		rtt  time.Duration
		want bool
	}{{50 * time.Microsecond, false}, {999 * time.Microsecond, false}, {time.Millisecond, true}, {80 * time.Millisecond, true}} {
		if got := boundsUnsent(tc.rtt); got != tc.want {
			t.Errorf("boundsUnsent(%s) = %v, want %v", tc.rtt, got, tc.want)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sockopt(t, c, "TCP_NOTSENT_LOWAT", boundUnsent)
	if got := notSentLowWaterOf(t, c); got != notSentLowWater {
		t.Errorf("TCP_NOTSENT_LOWAT %d after boundUnsent, want %d", got, notSentLowWater)
	}
}

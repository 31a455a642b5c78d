package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/logtest"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// holdEcho opens a connection to addr and checks one echoed byte; the
// connection stays open until the test ends.
func holdEcho(t *testing.T, addr string) (net.Conn, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, fmt.Errorf("read echo: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// waitFor polls cond until it holds or 15 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A dial side opens more tunnel connections while the ones it has near
// their stream bound, in either direction, serves every client, and closes
// the extra ones once idle.
func TestDialPoolGrowsWithStreamsAndShrinksWhenIdle(t *testing.T) {
	const maxStreams, held = 4, 14 // 4 tunnel connections' worth
	for _, reverse := range []bool{false, true} {
		t.Run(map[bool]string{false: "forward", true: "reverse"}[reverse], func(t *testing.T) {
			tr := memtransport.New()
			echo := testutil.EchoOrigin(t)
			listenStore, dialStore := pinned.Stores(t, wire.ALPN)
			mux := transport.Config{MaxStreams: maxStreams}
			listenCfg := Config{Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tr, TLS: listenStore, Mux: mux}
			var dialLogs logtest.Recorder
			obs := &recordingObserver{}
			dialCfg := Config{Mode: ModeDial, Transport: tr, Connections: 1, TLS: dialStore, Mux: mux,
				SurplusIdle: 200 * time.Millisecond, Logger: slog.New(&dialLogs), Observer: obs}
			route := []Route{{Name: "echo", Addr: "127.0.0.1:0"}}
			target := []Route{{Name: "echo", Addr: echo}}
			if reverse {
				listenCfg.Forward, dialCfg.Target = route, target
			} else {
				listenCfg.Target, dialCfg.Forward = target, route
			}
			listen := runEngine(t, listenCfg)
			dialCfg.Tunnel = []string{listen.TunnelAddr().String()}
			dial := runEngine(t, dialCfg)
			front := dial
			if reverse {
				front = listen
			}
			waitFor(t, "both sides' first tunnel", func() bool { return len(dial.Tunnels()) == 1 && len(listen.Tunnels()) == 1 })
			var conns []net.Conn
			for i := range held {
				c, err := holdEcho(t, front.ForwardAddrs()[0].String())
				conns = append(conns, c)
				if err != nil {
					t.Fatalf("client %d of %d (%d streams per tunnel connection): %v; dial side: %q", i+1, held, maxStreams, err, dialLogs.All())
				}
			}
			if n := len(dial.Tunnels()); n < held/maxStreams+1 {
				t.Errorf("dial side holds %d tunnel connections for %d clients at %d streams each, want at least %d", n, held, maxStreams, held/maxStreams+1)
			}
			if !dialLogs.Contains("tunnel connections near their stream bound: opening another", "limit=4") {
				t.Errorf("dial side did not log opening another tunnel connection: %q", dialLogs.All())
			}
			if n, extra := len(dial.Tunnels()), obs.count("extra tunnel"); extra < n-1 {
				t.Errorf("%d extra tunnel connections counted, %d connections up", extra, n)
			}
			// Closing the clients leaves the extra connections idle.
			for _, c := range conns {
				_ = c.Close()
			}
			waitFor(t, "the idle extra tunnel connections to close", func() bool { return len(dial.Tunnels()) == 1 })
			// A tunnel leaves the pool before its end is logged.
			deadline := time.Now().Add(5 * time.Second)
			for !dialLogs.Contains("tunnel disconnected", "reason=surplus") {
				if time.Now().After(deadline) {
					t.Fatalf("dial side did not log its extra tunnel connections closed as surplus: %q", dialLogs.All())
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// A client past every limit is refused with a line that names the limit
// and its variable, on the dial side (forward) and on the listen side
// (reverse), rather than a reset stream.
func TestDialPoolRefusalNamesTheLimit(t *testing.T) {
	const maxStreams, maxConns = 2, 2
	for _, tc := range []struct {
		name    string
		reverse bool
		want    string
	}{
		{"forward", false, "reason=PQT_MAX_STREAMS reached on every tunnel connection, and PQT_MAX_CONNECTIONS of them are open"},
		{"reverse", true, "reason=PQT_MAX_STREAMS reached on every tunnel connection of the allowed peers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := memtransport.New()
			echo := testutil.EchoOrigin(t)
			listenStore, dialStore := pinned.Stores(t, wire.ALPN)
			// A client that finds every tunnel connection full waits this
			// long for one with room.
			mux := transport.Config{MaxStreams: maxStreams, HandshakeTimeout: 500 * time.Millisecond}
			var listenLogs, dialLogs logtest.Recorder
			listenCfg := Config{Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tr, TLS: listenStore, Mux: mux, Logger: slog.New(&listenLogs)}
			dialCfg := Config{Mode: ModeDial, Transport: tr, Connections: 1, MaxConnections: maxConns, TLS: dialStore, Mux: mux, Logger: slog.New(&dialLogs)}
			route := []Route{{Name: "echo", Addr: "127.0.0.1:0"}}
			target := []Route{{Name: "echo", Addr: echo}}
			front, logs := &dialCfg, &dialLogs
			if tc.reverse {
				listenCfg.Forward, dialCfg.Target = route, target
				front, logs = &listenCfg, &listenLogs
			} else {
				listenCfg.Target, dialCfg.Forward = target, route
			}
			listen := runEngine(t, listenCfg)
			dialCfg.Tunnel = []string{listen.TunnelAddr().String()}
			dial := runEngine(t, dialCfg)
			fe := dial
			if front == &listenCfg {
				fe = listen
			}
			waitFor(t, "both sides' first tunnel", func() bool { return len(dial.Tunnels()) == 1 && len(listen.Tunnels()) == 1 })
			for i := range maxStreams * maxConns {
				if _, err := holdEcho(t, fe.ForwardAddrs()[0].String()); err != nil {
					t.Fatalf("client %d of %d: %v", i+1, maxStreams*maxConns, err)
				}
			}
			waitFor(t, "both sides to see the second tunnel", func() bool { return len(listen.Tunnels()) == maxConns })
			expectRefused(t, fe.ForwardAddrs()[0].String())
			if !logs.Contains("client refused", tc.want, "limit=2", "tunnels=2") {
				t.Errorf("no refusal naming the limit; logs: %q", logs.All())
			}
			if logs.Contains("send preamble failed") {
				t.Errorf("a client went to a full tunnel connection: %q", logs.All())
			}
		})
	}
}

// hostsTable is a LookupHost whose answers a test changes.
type hostsTable struct {
	mu    sync.Mutex
	addrs []netip.Addr
}

func (h *hostsTable) set(addrs ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.addrs = nil
	for _, a := range addrs {
		h.addrs = append(h.addrs, netip.MustParseAddr(a))
	}
}

func (h *hostsTable) lookup(_ context.Context, host string) ([]netip.Addr, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if host != "relays.test" {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return slices.Clone(h.addrs), nil
}

// remotes lists the addresses e's tunnels are connected to, sorted.
func remotes(e *Engine) []string {
	var out []string
	for _, i := range e.Tunnels() {
		out = append(out, i.Remote.String())
	}
	slices.Sort(out)
	return out
}

// A dial side given a name with several addresses keeps a tunnel to each,
// follows the name as addresses come and go, and drains, not cuts, the
// streams of a vanished address.
func TestDialPoolFollowsTheNamesAddresses(t *testing.T) {
	tr := memtransport.New()
	echo := testutil.EchoOrigin(t)
	listenStore, dialStore := pinned.Stores(t, wire.ALPN)
	relays := map[string]*Engine{}
	for _, ip := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		relays[ip] = runEngine(t, Config{Mode: ModeListen, Tunnel: []string{ip + ":8443"}, Transport: tr, TLS: listenStore,
			Target: []Route{{Name: "echo", Addr: echo}}})
	}
	hosts := &hostsTable{}
	hosts.set("10.0.0.2", "10.0.0.1")
	var logs logtest.Recorder
	obs := &recordingObserver{}
	dial := runEngine(t, Config{Mode: ModeDial, Tunnel: []string{"relays.test:8443"}, Transport: tr, Connections: 1, TLS: dialStore,
		Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}}, ResolveInterval: 50 * time.Millisecond, LookupHost: hosts.lookup,
		Logger: slog.New(&logs), Observer: obs})
	fwd := dial.ForwardAddrs()[0].String()
	has := func(want ...string) func() bool {
		return func() bool { return slices.Equal(remotes(dial), want) }
	}
	waitFor(t, "tunnels to both addresses", has("10.0.0.1:8443", "10.0.0.2:8443"))
	if !logs.Contains("tunnel name resolved", "name=relays.test:8443", "10.0.0.1:8443", "10.0.0.2:8443") {
		t.Errorf("no line with the name's addresses: %q", logs.All())
	}

	hosts.set("10.0.0.1", "10.0.0.2", "10.0.0.3")
	waitFor(t, "a tunnel to the new address", has("10.0.0.1:8443", "10.0.0.2:8443", "10.0.0.3:8443"))
	if !logs.Contains("tunnel addresses changed", "added=[10.0.0.3:8443]", "removed=[]") {
		t.Errorf("no line for the added address: %q", logs.All())
	}
	if obs.count("addresses +1 -0") != 1 {
		t.Errorf("the added address was not counted: %q", obs.all())
	}
	// Clients spread over the three relays.
	var held []net.Conn
	for i := range 6 {
		c, err := holdEcho(t, fwd)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		held = append(held, c)
	}
	busy := relays["10.0.0.2"]
	waitFor(t, "a client on every relay", func() bool {
		for _, r := range relays {
			if r.tunnels.active() == 0 {
				return false
			}
		}
		return true
	})

	hosts.set("10.0.0.1", "10.0.0.3")
	waitFor(t, "the vanished address out of the pool", func() bool {
		return !slices.Contains(addrsOfPool(dial), "10.0.0.2:8443")
	})
	if !logs.Contains("tunnel addresses changed", "added=[]", "removed=[10.0.0.2:8443]") {
		t.Errorf("no line for the removed address: %q", logs.All())
	}
	// Its clients are still served while their tunnel drains.
	if len(busy.Tunnels()) != 1 {
		t.Fatalf("the vanished address's tunnel was cut with its streams open")
	}
	for i, c := range held {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{'y'}); err != nil {
			t.Fatalf("client %d after the address vanished: %v", i, err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("client %d after the address vanished: %v", i, err)
		}
		_ = c.Close()
	}
	waitFor(t, "the drained tunnel to close", func() bool { return len(busy.Tunnels()) == 0 })
	if !logs.Contains("tunnel disconnected", "reason=address_removed") {
		t.Errorf("no disconnect line with reason address_removed: %q", logs.All())
	}
	waitFor(t, "tunnels to the remaining addresses", has("10.0.0.1:8443", "10.0.0.3:8443"))
}

// A name whose lookup hangs holds up neither the pool's other entries
// nor its growing: the tunnel to an address given as such comes up at
// once, and the slow name is dialled when its lookup fails.
func TestDialPoolDoesNotWaitForASlowLookup(t *testing.T) {
	tr := memtransport.New()
	echo := testutil.EchoOrigin(t)
	listenStore, dialStore := pinned.Stores(t, wire.ALPN)
	runEngine(t, Config{Mode: ModeListen, Tunnel: []string{"10.0.3.1:8443"}, Transport: tr, TLS: listenStore,
		Target: []Route{{Name: "echo", Addr: echo}}})
	slow := func(ctx context.Context, host string) ([]netip.Addr, error) {
		<-ctx.Done() // a name server that never answers
		return nil, ctx.Err()
	}
	var logs logtest.Recorder
	start := time.Now()
	dial := runEngine(t, Config{Mode: ModeDial, Tunnel: []string{"slow.test:8443", "10.0.3.1:8443"}, Transport: tr, Connections: 2, TLS: dialStore,
		Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}}, LookupHost: slow, Logger: slog.New(&logs)})
	waitFor(t, "the tunnel to the address", func() bool { return slices.Contains(addrsOfPool(dial), "10.0.3.1:8443") })
	if took := time.Since(start); took >= lookupTimeout {
		t.Errorf("the tunnel to the address came up after %s, behind the slow lookup (%s)", took, lookupTimeout)
	}
	if logs.Contains("tunnel name lookup failed") {
		t.Errorf("the slow lookup ended before the tunnel to the address was up: %q", logs.All())
	}
}

// addrsOfPool lists the remote addresses of the tunnels in e's pool.
func addrsOfPool(e *Engine) []string {
	var out []string
	for _, t := range e.tunnels.snapshot() {
		out = append(out, t.s.Info().Remote.String())
	}
	return out
}

// lookupTunnel dials an IP literal as given, and a name's IPv4 addresses
// (or its IPv6 ones when it has none), sorted and without duplicates.
func TestLookupTunnelAddresses(t *testing.T) {
	answers := map[string][]string{
		"dual.test": {"2001:db8::2", "192.0.2.9", "::ffff:192.0.2.1", "192.0.2.9", "2001:db8::1"},
		"v6.test":   {"2001:db8::2", "2001:db8::1"},
		"none.test": {},
	}
	e := &Engine{cfg: Config{LookupHost: func(_ context.Context, host string) ([]netip.Addr, error) {
		a, ok := answers[host]
		if !ok {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		var out []netip.Addr
		for _, s := range a {
			out = append(out, netip.MustParseAddr(s))
		}
		return out, nil
	}}}
	for _, tc := range []struct {
		entry  string
		want   []string
		isName bool
		err    bool
	}{
		{"192.0.2.7:8443", []string{"192.0.2.7:8443"}, false, false},
		{"[2001:db8::7]:8443", []string{"[2001:db8::7]:8443"}, false, false},
		{"dual.test:8443", []string{"192.0.2.1:8443", "192.0.2.9:8443"}, true, false},
		{"v6.test:8443", []string{"[2001:db8::1]:8443", "[2001:db8::2]:8443"}, true, false},
		{"none.test:8443", nil, true, true},
		{"gone.test:8443", nil, true, true},
	} {
		got, isName, err := e.lookupTunnel(context.Background(), tc.entry)
		if (err != nil) != tc.err || isName != tc.isName || !slices.Equal(addrsOf(got), tc.want) {
			t.Errorf("lookupTunnel(%s) = %v, name %v, err %v; want %v, name %v, error %v", tc.entry, addrsOf(got), isName, err, tc.want, tc.isName, tc.err)
		}
		for _, g := range got {
			if g.entry != tc.entry {
				t.Errorf("lookupTunnel(%s): target %s carries entry %q", tc.entry, g.addr, g.entry)
			}
		}
	}
}

// PQT_CONNECTIONS are spread round-robin over the name's addresses, and
// spread again as addresses come and go.
func TestDialPoolSpreadsConnectionsOverAddresses(t *testing.T) {
	tr := memtransport.New()
	echo := testutil.EchoOrigin(t)
	listenStore, dialStore := pinned.Stores(t, wire.ALPN)
	for _, ip := range []string{"10.0.1.1", "10.0.1.2", "10.0.1.3"} {
		runEngine(t, Config{Mode: ModeListen, Tunnel: []string{ip + ":8443"}, Transport: tr, TLS: listenStore,
			Target: []Route{{Name: "echo", Addr: echo}}})
	}
	hosts := &hostsTable{}
	hosts.set("10.0.1.1", "10.0.1.2")
	dial := runEngine(t, Config{Mode: ModeDial, Tunnel: []string{"relays.test:8443"}, Transport: tr, Connections: 4, TLS: dialStore,
		Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}}, ResolveInterval: 50 * time.Millisecond, LookupHost: hosts.lookup})
	spread := func(want ...string) {
		t.Helper()
		waitFor(t, fmt.Sprintf("tunnels to %v", want), func() bool {
			got := addrsOfPool(dial)
			slices.Sort(got)
			return slices.Equal(got, want)
		})
	}
	spread("10.0.1.1:8443", "10.0.1.1:8443", "10.0.1.2:8443", "10.0.1.2:8443")
	hosts.set("10.0.1.1", "10.0.1.2", "10.0.1.3")
	spread("10.0.1.1:8443", "10.0.1.1:8443", "10.0.1.2:8443", "10.0.1.3:8443")
	hosts.set("10.0.1.3")
	spread("10.0.1.3:8443", "10.0.1.3:8443", "10.0.1.3:8443", "10.0.1.3:8443")
}

// A tunnel whose session takes the peer to accept fewer of this side's
// streams than it accepts of the peer's (over tcp, a long path near a step
// of the initial window) opens no more than that, and is full there; a
// refusal at fewer still lowers it.
func TestTunnelOpensNoMoreStreamsThanThePeerIsTakenToAccept(t *testing.T) {
	tu := &tunnel{bound: transport.StreamBound{Streams: 4, Opens: 2}}
	for i := range 2 {
		if !tu.takeOpened() {
			t.Fatalf("stream %d of 2 not taken", i+1)
		}
	}
	if tu.takeOpened() {
		t.Fatal("a third stream taken past the peer's bound of 2")
	}
	if !tu.full() || tu.outBound() != 2 {
		t.Errorf("full %v, bound %d; want full at 2", tu.full(), tu.outBound())
	}
	tu.releaseOpened()
	if b := tu.peerRefused(2); b != 1 || tu.outBound() != 1 {
		t.Errorf("after a refusal with 2 open: bound %d (kept %d), want 1", tu.outBound(), b)
	}
}

package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// holdClient opens a client connection to addr and checks one echoed byte;
// the connection stays open, for the test to close.
func holdClient(ctx context.Context, addr string) (*net.TCPConn, error) {
	c, err := dialClient(ctx, addr)
	if err != nil {
		return nil, err
	}
	if err := echoOneByte(c); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// echoOneByte sends a byte on c and reads it back.
func echoOneByte(c net.Conn) error {
	if _, err := c.Write([]byte{'x'}); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	return nil
}

// holdClients opens n held clients to addr, one after another, each served.
func holdClients(t *testing.T, ctx context.Context, addr string, n int) []*net.TCPConn {
	t.Helper()
	var conns []*net.TCPConn
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for i := range n {
		c, err := holdClient(ctx, addr)
		if err != nil {
			t.Fatalf("client %d of %d: %v", i+1, n, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// A dial side holding more clients than one tunnel connection carries opens
// more tunnel connections and serves them all, over each transport. Over
// tcp the bound per connection comes from PQT_MAX_CONN_MEMORY (here 7
// streams for 4MiB), over quic from PQT_MAX_STREAMS.
func TestDialSideOpensMoreTunnelConnectionsAsStreamsFill(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 90*time.Second)
		limits := map[string]string{"PQT_MAX_STREAMS": "8", "PQT_MAX_CONN_MEMORY": "4MiB"}
		bound := map[string]int{"quic": 8, "tcp": 7}[transport]
		o := startEcho(t)
		p := startPair(t, ctx, pairOptions{transport: transport, target: o.addr(),
			listenEnv: limits, dialEnv: merge(limits, map[string]string{"PQT_CONNECTIONS": "1"})})
		const held = 40
		holdClients(t, ctx, p.dial.forward[""], held)
		want := held/bound + 1
		connected := msgIs("tunnel connected", "transport", transport)
		p.dial.waitLogs(t, within(t, ctx, 20*time.Second), want, connected)
		p.listen.waitLogs(t, within(t, ctx, 20*time.Second), want, connected)
		if n := len(p.dial.logs(msgIs("tunnel connections near their stream bound: opening another", "limit", strconv.Itoa(bound)))); n < want-1 {
			t.Errorf("dial side logged %d extra tunnel connections opened at limit=%d, want at least %d", n, bound, want-1)
		}
		if n := len(p.dial.logs(msgIs("client refused"))); n > 0 {
			t.Errorf("dial side refused %d clients: %v", n, p.dial.logs(msgIs("client refused")))
		}
	})
}

// merge returns the union of maps, later ones winning.
func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// A client past every limit (the stream bound of every tunnel connection,
// and PQT_MAX_CONNECTIONS of them) is refused promptly with a line naming
// the limit and its variable, rather than a reset stream.
func TestClientPastEveryLimitIsRefusedNamingTheLimit(t *testing.T) {
	for _, tc := range []struct {
		transport, variable string
		bound               int
	}{{"quic", "PQT_MAX_STREAMS", 4}, {"tcp", "PQT_MAX_CONN_MEMORY", 3}} {
		t.Run(tc.transport, func(t *testing.T) {
			ctx := testContext(t, 60*time.Second)
			limits := map[string]string{"PQT_MAX_STREAMS": "4", "PQT_MAX_CONN_MEMORY": "2MiB"}
			o := startEcho(t)
			p := startPair(t, ctx, pairOptions{transport: tc.transport, target: o.addr(), listenEnv: limits,
				dialEnv: merge(limits, map[string]string{"PQT_CONNECTIONS": "1", "PQT_MAX_CONNECTIONS": "2"})})
			holdClients(t, ctx, p.dial.forward[""], 2*tc.bound)
			if err := expectClosedPromptly(ctx, p.dial.forward[""], 2*time.Second); err != nil {
				t.Fatal(err)
			}
			p.dial.waitLog(t, within(t, ctx, 5*time.Second), msgIs("client refused",
				"reason", tc.variable+" reached on every tunnel connection, and PQT_MAX_CONNECTIONS of them are open",
				"limit", strconv.Itoa(tc.bound), "tunnels", "2", "max_connections", "2"))
			if l := p.dial.logs(msgIs("client refused", "reason", "send preamble failed")); len(l) > 0 {
				t.Errorf("a client was sent to a full tunnel connection: %v", l)
			}
		})
	}
}

// Over tcp, a dial side left at the default settings in front of a listen
// side that takes fewer streams per connection (PQT_MAX_CONN_MEMORY=2MiB:
// 3) refuses the one client the listen side reset with a line naming the
// peer's settings, learns the peer's bound from it, and carries the next
// clients over more tunnel connections.
func TestDialSideLearnsALowerStreamBoundFromTheListenSide(t *testing.T) {
	const bound = 3
	ctx := testContext(t, 60*time.Second)
	o := startEcho(t)
	p := startPair(t, ctx, pairOptions{transport: "tcp", target: o.addr(),
		listenEnv: map[string]string{"PQT_MAX_CONN_MEMORY": "2MiB"},
		dialEnv:   map[string]string{"PQT_CONNECTIONS": "1"}})
	holdClients(t, ctx, p.dial.forward[""], bound)
	if err := expectClosedPromptly(ctx, p.dial.forward[""], 2*time.Second); err != nil {
		t.Fatal(err)
	}
	p.dial.waitLog(t, within(t, ctx, 5*time.Second), msgIs("client refused",
		"reason", "the peer refused the stream: it carries its stream bound on this tunnel connection, or it is going away"))
	holdClients(t, ctx, p.dial.forward[""], 2*bound)
	p.dial.waitLogs(t, within(t, ctx, 10*time.Second), 3, msgIs("tunnel connected", "transport", "tcp"))
	if n := len(p.dial.logs(msgIs("client refused"))); n != 1 {
		t.Errorf("dial side refused %d clients, want the one that taught it the bound: %v", n, p.dial.logs(msgIs("client refused")))
	}
	if l := p.dial.logs(msgIs("stream aborted")); len(l) > 0 {
		t.Errorf("clients were reset: %v", l)
	}
}

// relayAddr is a listen side's tunnel address on one loopback address.
func relayAddr(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// startRelay starts a listen side on ip:port delivering to target.
func startRelay(t *testing.T, ctx context.Context, ip string, port int, target string) *side {
	t.Helper()
	env := sideEnv("listen", "tcp", identityNamed(t, "listen"), identityNamed(t, "dial"), map[string]string{
		"PQT_TUNNEL": relayAddr(ip, port), "PQT_TARGET": target})
	p := startProc(t, ctx, "listen side "+ip, env, pqtunnelBin)
	p.waitLog(t, within(t, ctx, 15*time.Second), msgIs("tunnel listening"))
	return &side{proc: p, tunnelAddr: relayAddr(ip, port)}
}

// writeHosts rewrites the hosts file in place, keeping its inode, which a
// bind mount refers to.
func writeHosts(t *testing.T, path, name string, ips ...string) {
	t.Helper()
	text := "127.0.0.1 localhost\n"
	for _, ip := range ips {
		text += ip + " " + name + "\n"
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// A dial side given a name with several addresses (a headless Service)
// keeps a tunnel connection to each relay, follows the name as addresses
// are added and removed, and drains, rather than cuts, the clients of a
// removed address. The dial side resolves through a hosts file the test
// controls, bind-mounted over /etc/hosts in a mount namespace of its own.
func TestDialSideSpreadsOverEveryAddressOfTheName(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the dial side runs in a mount namespace with its own /etc/hosts")
	}
	ctx := testContext(t, 120*time.Second)
	port := freePort(t)
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	relays := map[string]*side{}
	origins := map[string]*origin{}
	for _, ip := range ips {
		origins[ip] = startEcho(t)
		relays[ip] = startRelay(t, ctx, ip, port, origins[ip].addr())
	}
	const name = "relays.pqtunnel.test"
	hosts := filepath.Join(t.TempDir(), "hosts")
	writeHosts(t, hosts, name, "127.0.0.1", "127.0.0.2")
	fwd := loopback(freePort(t))
	env := sideEnv("dial", "tcp", identityNamed(t, "dial"), identityNamed(t, "listen"), map[string]string{
		"PQT_TUNNEL": relayAddr(name, port), "PQT_FORWARD": fwd, "PQT_CONNECTIONS": "1", "PQT_RESOLVE_INTERVAL": "1s"})
	dial := startProc(t, ctx, "dial side", env, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", `mount --bind "$1" /etc/hosts && exec "$2"`, "sh", hosts, pqtunnelBin)
	wctx := within(t, ctx, 20*time.Second)
	resolved := dial.waitLog(t, wctx, msgIs("tunnel name resolved", "name", relayAddr(name, port)))
	if got, want := resolved.str("addrs"), fmt.Sprint([]string{relayAddr("127.0.0.1", port), relayAddr("127.0.0.2", port)}); got != want {
		t.Errorf("resolved addrs = %s, want %s", got, want)
	}
	for _, ip := range ips[:2] {
		relays[ip].waitLog(t, wctx, msgIs("tunnel connected"))
	}

	writeHosts(t, hosts, name, ips...)
	// Go's resolver looks at /etc/hosts again at most every 5 s.
	wctx = within(t, ctx, 30*time.Second)
	dial.waitLog(t, wctx, msgIs("tunnel addresses changed", "added", fmt.Sprint([]string{relayAddr("127.0.0.3", port)})))
	relays["127.0.0.3"].waitLog(t, wctx, msgIs("tunnel connected"))
	dial.waitLogs(t, wctx, 3, msgIs("tunnel connected"))
	// Clients spread over the three relays: the least-loaded tunnel first.
	conns := holdClients(t, ctx, fwd, 3)
	for _, ip := range ips {
		if n := origins[ip].acceptCount(); n != 1 {
			t.Errorf("relay %s carried %d of 3 clients, want 1", ip, n)
		}
	}

	writeHosts(t, hosts, name, "127.0.0.1", "127.0.0.3")
	wctx = within(t, ctx, 30*time.Second)
	dial.waitLog(t, wctx, msgIs("tunnel addresses changed", "removed", fmt.Sprint([]string{relayAddr("127.0.0.2", port)})))
	// The removed relay's client is still served while its tunnel drains.
	for i, c := range conns {
		if err := echoOneByte(c); err != nil {
			t.Fatalf("client %d after an address was removed: %v", i, err)
		}
	}
	if l := relays["127.0.0.2"].logs(msgIs("tunnel disconnected")); len(l) > 0 {
		t.Fatalf("the removed address's tunnel was cut while it carried a client: %v", l)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	dial.waitLog(t, wctx, msgIs("tunnel disconnected", "reason", "address_removed"))
	relays["127.0.0.2"].waitLog(t, wctx, msgIs("tunnel disconnected"))
	// New clients go to the remaining relays only.
	before := origins["127.0.0.2"].acceptCount()
	holdClients(t, ctx, fwd, 4)
	if n := origins["127.0.0.2"].acceptCount(); n != before {
		t.Errorf("the removed relay got %d new clients", n-before)
	}
	if strings.Contains(dial.stderr.String(), `"level":"ERROR"`) {
		t.Errorf("dial side logged errors")
	}
}

package integration

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// This file tests how tunnels are laid out and how they survive: reverse
// mode, several dial sides, the HA pool, the auto transport's fallback and
// return to QUIC, restarts, and the listen side's drain.

// topoFlow is one client connection through the tunnel to an echo origin
// whose writer is paced, so that the transfer lasts a known time and can be
// interrupted in the middle.
type topoFlow struct {
	payload []byte
	conn    *net.TCPConn

	mu      sync.Mutex
	read    int
	waiters []topoWaiter
	done    chan struct{} // closed when reading ended
	got     []byte
	err     error // read error, nil at a clean EOF
	end     time.Time

	writeErr chan error // the writer's error, or CloseWrite's result
}

type topoWaiter struct {
	n  int
	ch chan struct{}
}

// topoStartFlow connects to addr and sends payload in 64 KiB chunks spread
// evenly over dur, then half-closes; a reader collects the echo.
func topoStartFlow(ctx context.Context, addr string, payload []byte, dur time.Duration) (*topoFlow, error) {
	c, err := dialClient(ctx, addr)
	if err != nil {
		return nil, err
	}
	f := &topoFlow{payload: payload, conn: c, done: make(chan struct{}), writeErr: make(chan error, 1)}
	const chunk = 64 << 10
	go func() {
		chunks := (len(payload) + chunk - 1) / chunk
		tick := time.NewTicker(max(dur/time.Duration(chunks), time.Millisecond))
		defer tick.Stop()
		for off := 0; off < len(payload); off += chunk {
			<-tick.C // pacing, not synchronisation
			if _, err := c.Write(payload[off:min(off+chunk, len(payload))]); err != nil {
				f.writeErr <- err
				return
			}
		}
		f.writeErr <- c.CloseWrite()
	}()
	go func() {
		got := make([]byte, 0, len(payload))
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			f.mu.Lock()
			f.read = len(got)
			kept := f.waiters[:0]
			for _, w := range f.waiters {
				if f.read >= w.n || err != nil {
					close(w.ch)
				} else {
					kept = append(kept, w)
				}
			}
			f.waiters = kept
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				f.got, f.err, f.end = got, err, time.Now()
				close(f.done)
			}
			f.mu.Unlock()
			if err != nil || f.isDone() {
				return
			}
		}
	}()
	return f, nil
}

// sawReset reports whether the client's socket was reset, as seen by its
// reader or its writer: the kernel hands a reset to whichever socket call
// comes first, and the other then sees a clean end (EOF, or a successful
// CloseWrite). Call it after wait.
func (f *topoFlow) sawReset() bool {
	isReset := func(err error) bool {
		return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	}
	if isReset(f.err) {
		return true
	}
	// wait closed the socket, so the writer ends at its next write at
	// the latest.
	select {
	case err := <-f.writeErr:
		f.writeErr <- err // for a later call
		return isReset(err)
	case <-time.After(5 * time.Second):
		return false
	}
}

func (f *topoFlow) isDone() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// reached returns a channel closed once n bytes came back or reading ended.
func (f *topoFlow) reached(n int) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan struct{})
	if f.read >= n || f.isDone() {
		close(ch)
		return ch
	}
	f.waiters = append(f.waiters, topoWaiter{n: n, ch: ch})
	return ch
}

// waitRead waits until n bytes came back; it fails the test if the flow
// ended first or ctx ended.
func (f *topoFlow) waitRead(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	select {
	case <-f.reached(n):
	case <-ctx.Done():
		t.Fatalf("flow: %d of %d bytes echoed: %v", f.readSoFar(), n, ctx.Err())
	}
	if f.readSoFar() < n {
		t.Fatalf("flow ended after %d bytes (%v), before %d came back", f.readSoFar(), f.err, n)
	}
}

func (f *topoFlow) readSoFar() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.read
}

// wait waits until reading ended and returns nil for a byte-exact echo.
func (f *topoFlow) wait(ctx context.Context) error {
	select {
	case <-f.done:
	case <-ctx.Done():
		_ = f.conn.Close() // unblocks both goroutines
		<-f.done
		return fmt.Errorf("flow still running after %d of %d bytes: %w", len(f.got), len(f.payload), ctx.Err())
	}
	_ = f.conn.Close() // done with it either way
	if f.err != nil {
		return fmt.Errorf("read after %d of %d bytes: %w", len(f.got), len(f.payload), f.err)
	}
	return sameBytes(f.got, f.payload)
}

// topoKill sends SIGKILL to s and waits until it is gone.
func topoKill(t *testing.T, ctx context.Context, p *proc) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	p.wait(t, within(t, ctx, 5*time.Second))
}

// topoPort is the port number of a host:port address.
func topoPort(t *testing.T, addr string) int {
	t.Helper()
	_, ps, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(ps)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// topoLogTime is the time attribute of a JSON log line.
func topoLogTime(t *testing.T, l logLine) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, l.str("time"))
	if err != nil {
		t.Fatalf("log line without a time: %v", l)
	}
	return ts
}

// topoReverse starts a reverse tunnel: a listen side exposing forward (one
// unnamed route on a fresh port unless extra sets PQT_FORWARD) and a dial
// side delivering to target. It waits for the dial side's connections.
func topoReverse(t *testing.T, ctx context.Context, transport, target string, listenExtra, dialExtra map[string]string) (l, d *side) {
	t.Helper()
	lenv := map[string]string{"PQT_FORWARD": loopback(freePort(t))}
	for k, v := range listenExtra {
		lenv[k] = v
	}
	l = startListen(t, ctx, 0, transport, lenv)
	l.forward = map[string]string{"": lenv["PQT_FORWARD"]}
	denv := map[string]string{"PQT_TARGET": target, "PQT_CONNECTIONS": "1"}
	for k, v := range dialExtra {
		denv[k] = v
	}
	d = startDial(t, ctx, l.tunnelAddr, transport, []string{}, denv)
	n, _ := strconv.Atoi(denv["PQT_CONNECTIONS"])
	connected := msgIs("tunnel connected", "transport", transport, "group", "X25519MLKEM768")
	wctx := within(t, ctx, 20*time.Second)
	d.waitLogs(t, wctx, n, connected)
	l.waitLogs(t, wctx, n, connected)
	return l, d
}

// TestReverseTunnel runs the Cloudflare-Tunnel layout: the dial side sits
// next to the origin with PQT_TARGET and the listen side exposes
// PQT_FORWARD; then one pair carries a route each way at once.
func TestReverseTunnel(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		t.Run("reverse", func(t *testing.T) {
			o := startEcho(t)
			l, _ := topoReverse(t, ctx, transport, o.addr(), nil, nil)
			if err := echoExact(within(t, ctx, 20*time.Second), l.forward[""], randomBytes(101, 2<<20)); err != nil {
				t.Fatalf("reverse echo over %s: %v", transport, err)
			}
			if n := o.acceptCount(); n != 1 {
				t.Errorf("origin accepted %d connections, want 1", n)
			}
		})
		t.Run("both directions", func(t *testing.T) {
			oa, ob := startEcho(t), startEcho(t)
			lfwd := loopback(freePort(t))
			l := startListen(t, ctx, 0, transport, map[string]string{
				"PQT_TARGET": "a=" + oa.addr(), "PQT_FORWARD": "b=" + lfwd,
			})
			d := startDial(t, ctx, l.tunnelAddr, transport, []string{"a"}, map[string]string{
				"PQT_TARGET": "b=" + ob.addr(), "PQT_CONNECTIONS": "1",
			})
			dfwd := d.forward["a"]
			connected := msgIs("tunnel connected", "transport", transport)
			wctx := within(t, ctx, 20*time.Second)
			d.waitLog(t, wctx, connected)
			l.waitLog(t, wctx, connected)
			if err := echoExact(within(t, ctx, 20*time.Second), dfwd, randomBytes(102, 1<<20)); err != nil {
				t.Fatalf("route a (dial side to listen side's target): %v", err)
			}
			if err := echoExact(within(t, ctx, 20*time.Second), lfwd, randomBytes(103, 1<<20)); err != nil {
				t.Fatalf("route b (listen side to dial side's target): %v", err)
			}
			if a, b := oa.acceptCount(), ob.acceptCount(); a != 1 || b != 1 {
				t.Errorf("origins a and b accepted %d and %d connections, want 1 each", a, b)
			}
		})
	})
}

// TestReverseSeveralDialSides connects two dial sides, each next to its own
// origin, to one listen side serving one route: concurrent clients are
// spread over both, and once one is killed (and the listen side has noticed)
// every client goes to the survivor.
func TestReverseSeveralDialSides(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		idA, idB := identityNamed(t, "topo-dial-a"), identityNamed(t, "topo-dial-b")
		oa, ob := startEcho(t), startEcho(t)
		timeouts := map[string]string{"PQT_IDLE_TIMEOUT": "3s", "PQT_KEEPALIVE": "1s"}
		lenv := map[string]string{"PQT_FORWARD": loopback(freePort(t)), "PQT_PEERS": idA.pin + "," + idB.pin}
		for k, v := range timeouts {
			lenv[k] = v
		}
		l := startListen(t, ctx, 0, transport, lenv)
		fwd := lenv["PQT_FORWARD"]
		dial := func(id identity, o *origin) *side {
			env := map[string]string{"PQT_IDENTITY": id.path, "PQT_TARGET": o.addr(), "PQT_CONNECTIONS": "2"}
			for k, v := range timeouts {
				env[k] = v
			}
			return startDial(t, ctx, l.tunnelAddr, transport, []string{}, env)
		}
		da, db := dial(idA, oa), dial(idB, ob)
		wctx := within(t, ctx, 20*time.Second)
		for _, id := range []identity{idA, idB} {
			l.waitLogs(t, wctx, 2, msgIs("tunnel connected", "transport", transport, "peer", id.pin))
		}
		da.waitLogs(t, wctx, 2, msgIs("tunnel connected"))
		db.waitLogs(t, wctx, 2, msgIs("tunnel connected"))

		// Clients that overlap in time are spread by load: hold ten open.
		var held []*net.TCPConn
		for i := range 10 {
			c, err := dialClient(within(t, ctx, 10*time.Second), fwd)
			if err != nil {
				t.Fatalf("held client %d: %v", i, err)
			}
			held = append(held, c)
			hello := []byte(fmt.Sprintf("hello %02d", i))
			got := make([]byte, len(hello))
			if _, err := c.Write(hello); err != nil {
				t.Fatalf("held client %d: %v", i, err)
			}
			if _, err := io.ReadFull(c, got); err != nil || string(got) != string(hello) {
				t.Fatalf("held client %d: echo %q, %v", i, got, err)
			}
		}
		a, b := oa.acceptCount(), ob.acceptCount()
		t.Logf("10 concurrent clients: dial side A served %d, B served %d", a, b)
		if a+b != 10 || a < 3 || b < 3 {
			t.Errorf("10 concurrent clients: dial side A served %d, B %d; want at least 3 each", a, b)
		}
		for _, c := range held {
			_ = c.Close() // done
		}

		// Sequential clients: every tunnel is idle when the next one comes,
		// and ties go round-robin, so both dial sides serve them.
		const clients = 20
		for i := range clients {
			if err := echoExact(within(t, ctx, 10*time.Second), fwd, randomBytes(uint64(200+i), 64<<10)); err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
		}
		a2, b2 := oa.acceptCount()-a, ob.acceptCount()-b
		t.Logf("%d sequential clients: dial side A served %d, B served %d", clients, a2, b2)
		if a2+b2 != clients {
			t.Errorf("origins accepted %d connections, want %d", a2+b2, clients)
		}
		if a2 < clients/4 || b2 < clients/4 {
			t.Errorf("%d sequential clients: dial side A served %d, B %d; want at least %d each", clients, a2, b2, clients/4)
		}

		start := time.Now()
		topoKill(t, ctx, da.proc)
		l.waitLogs(t, within(t, ctx, 3*time.Second+5*time.Second), 2, msgIs("tunnel disconnected", "peer", idA.pin))
		t.Logf("listen side noticed the killed dial side after %s", time.Since(start).Round(time.Millisecond))
		a, b = oa.acceptCount(), ob.acceptCount()
		for i := range 10 {
			if err := echoExact(within(t, ctx, 10*time.Second), fwd, randomBytes(uint64(300+i), 64<<10)); err != nil {
				t.Fatalf("client %d after dial side A was killed: %v", i, err)
			}
		}
		if da2, db2 := oa.acceptCount(), ob.acceptCount(); da2 != a || db2 != b+10 {
			t.Errorf("after the kill origins A and B accepted %d and %d more connections, want 0 and 10", da2-a, db2-b)
		}
		if n := len(l.logs(msgIs("tunnel disconnected", "peer", idB.pin))); n != 0 {
			t.Errorf("listen side lost %d tunnel connections of the surviving dial side", n)
		}
	})
}

// TestReverseRouteOfOnePeerSpreads: a listen side's forward route that
// only dial side B may carry (@b) spreads sequential clients evenly over
// B's two tunnels, although dial side A's two tunnels come first in the
// pool. Before, the round-robin start ran over the whole pool, and the
// first allowed tunnel after A's took three clients in four.
func TestReverseRouteOfOnePeerSpreads(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	idA, idB := identityNamed(t, "topo-dial-a"), identityNamed(t, "topo-dial-b")
	oa, ob := startEcho(t), startEcho(t)
	fwd := loopback(freePort(t))
	l := startListen(t, ctx, 0, "tcp", map[string]string{
		"PQT_FORWARD": "web=" + fwd + "@b", "PQT_PEERS": "a=" + idA.pin + ",b=" + idB.pin, "PQT_ACCESS_LOG": "on",
	})
	dial := func(id identity, o *origin) {
		startDial(t, ctx, l.tunnelAddr, "tcp", []string{}, map[string]string{"PQT_IDENTITY": id.path, "PQT_TARGET": "web=" + o.addr(), "PQT_CONNECTIONS": "2"})
	}
	wctx := within(t, ctx, 20*time.Second)
	dial(idA, oa) // first, so that its tunnels lead the listen side's pool
	l.waitLogs(t, wctx, 2, msgIs("tunnel connected", "peer", "a"))
	dial(idB, ob)
	bTunnels := l.waitLogs(t, wctx, 2, msgIs("tunnel connected", "peer", "b"))

	const clients = 20
	for i := range clients {
		if err := echoExact(within(t, ctx, 10*time.Second), fwd, randomBytes(uint64(400+i), 4<<10)); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	lines, err := l.awaitLogs(within(t, ctx, 10*time.Second), clients, msgIs("connection", "direction", "out", "route", "web", "end", "closed"))
	if err != nil {
		t.Fatal(err)
	}
	byTunnel := map[string]int{}
	for _, line := range lines {
		byTunnel[line.str("tunnel")]++
	}
	t.Logf("%d sequential clients by tunnel: %v; origins A %d, B %d", clients, byTunnel, oa.acceptCount(), ob.acceptCount())
	if oa.acceptCount() != 0 || ob.acceptCount() != clients {
		t.Errorf("origins A and B accepted %d and %d connections, want 0 and %d", oa.acceptCount(), ob.acceptCount(), clients)
	}
	for _, bt := range bTunnels {
		if n := byTunnel[bt.str("tunnel")]; n < clients*2/5 {
			t.Errorf("tunnel %s of dial side B carried %d of %d sequential clients, want about half: %v", bt.str("tunnel"), n, clients, byTunnel)
		}
	}
}

// topoTagEcho is an echo origin that first reads an 8-byte tag and records
// that origin name served it.
func topoTagEcho(name string, seen *sync.Map) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		_ = c.SetDeadline(time.Now().Add(2 * time.Minute)) // a stuck test ends anyway
		var tag [8]byte
		if _, err := io.ReadFull(c, tag[:]); err != nil {
			return
		}
		seen.Store(binary.BigEndian.Uint64(tag[:]), name)
		if _, err := c.Write(tag[:]); err != nil {
			return
		}
		if _, err := io.Copy(c, c); err == nil {
			_ = c.CloseWrite() // errors show up as a short echo at the client
		}
	}
}

// TestHAPool checks the dial side's pool of tunnel connections: several to
// one peer, and one to each of two peers, where losing one peer in the
// middle of transfers fails only the transfers it carried, promptly, and
// later clients all go to the survivor.
func TestHAPool(t *testing.T) {
	t.Run("two connections to one peer", func(t *testing.T) {
		ctx := testContext(t, 30*time.Second)
		o := startEcho(t)
		p := startPair(t, ctx, pairOptions{transport: "tcp", target: o.addr(), dialEnv: map[string]string{"PQT_CONNECTIONS": "2"}})
		lines := p.listen.logs(msgIs("tunnel connected", "transport", "tcp"))
		if len(lines) != 2 {
			t.Fatalf("listen side logged %d tunnel connections, want 2", len(lines))
		}
		if lines[0].str("tunnel") == lines[1].str("tunnel") || lines[0].str("remote") == lines[1].str("remote") {
			t.Errorf("the two tunnel connections are not distinct: %v / %v", lines[0], lines[1])
		}
		for i := range 4 {
			if err := echoExact(within(t, ctx, 10*time.Second), p.dial.forward[""], randomBytes(uint64(400+i), 256<<10)); err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
		}
	})

	t.Run("two peers, one killed mid-transfer", func(t *testing.T) {
		const flows, size = 10, 4 << 20
		ctx := testContext(t, 60*time.Second)
		var seen sync.Map
		oa, ob := startOrigin(t, topoTagEcho("A", &seen)), startOrigin(t, topoTagEcho("B", &seen))
		la := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": oa.addr()})
		lb := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": ob.addr()})
		d := startDial(t, ctx, la.tunnelAddr+","+lb.tunnelAddr, "tcp", nil, map[string]string{"PQT_CONNECTIONS": "2"})
		wctx := within(t, ctx, 20*time.Second)
		toA := d.waitLog(t, wctx, msgIs("tunnel connected", "transport", "tcp", "remote", la.tunnelAddr))
		d.waitLog(t, wctx, msgIs("tunnel connected", "transport", "tcp", "remote", lb.tunnelAddr))
		la.waitLog(t, wctx, msgIs("tunnel connected"))
		lb.waitLog(t, wctx, msgIs("tunnel connected"))
		addr := d.forward[""]

		tctx := within(t, ctx, 40*time.Second)
		fs := make([]*topoFlow, flows)
		for i := range fs {
			payload := randomBytes(uint64(500+i), size)
			binary.BigEndian.PutUint64(payload, uint64(i))
			f, err := topoStartFlow(tctx, addr, payload, 3*time.Second)
			if err != nil {
				t.Fatalf("flow %d: %v", i, err)
			}
			fs[i] = f
			// Once its first bytes are back the flow counts as load on
			// its tunnel connection, so the next one goes to the other.
			f.waitRead(t, tctx, 8)
		}
		for _, f := range fs {
			f.waitRead(t, tctx, 512<<10)
		}
		on := map[string][]int{}
		for i := range fs {
			v, ok := seen.Load(uint64(i))
			if !ok {
				t.Fatalf("flow %d reached no origin", i)
			}
			on[v.(string)] = append(on[v.(string)], i)
		}
		t.Logf("flows on listen side A: %v, on B: %v", on["A"], on["B"])
		if len(on["A"]) == 0 || len(on["B"]) == 0 {
			t.Fatalf("flows not spread over both peers: A %v, B %v", on["A"], on["B"])
		}

		killed := time.Now()
		topoKill(t, ctx, la.proc)
		var cut []int // flows on A still running at the kill
		for _, i := range on["A"] {
			if fs[i].isDone() && fs[i].end.Before(killed) {
				t.Logf("flow %d on A finished before the kill (a slow machine); it proves nothing", i)
				continue
			}
			cut = append(cut, i)
		}
		if len(cut) == 0 {
			t.Fatal("every flow on A finished before the kill: the test proves nothing")
		}
		for _, i := range cut {
			err := fs[i].wait(tctx)
			if err == nil {
				t.Errorf("flow %d on the killed listen side completed: it cannot have", i)
				continue
			}
			if took := fs[i].end.Sub(killed); took > 10*time.Second {
				t.Errorf("flow %d on the killed listen side failed only %s after the kill (%v)", i, took, err)
			} else {
				t.Logf("flow %d on the killed listen side failed %s after the kill: %v", i, took.Round(time.Millisecond), err)
			}
			if !fs[i].sawReset() {
				t.Errorf("flow %d: the client's socket was not reset after %d of %d bytes, so it could take the truncated echo for a complete one (%v)", i, len(fs[i].got), size, err)
			}
		}
		for _, i := range on["B"] {
			if err := fs[i].wait(tctx); err != nil {
				t.Errorf("flow %d on the surviving listen side: %v", i, err)
			}
		}
		d.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel disconnected", "tunnel", toA.str("tunnel")))
		before := ob.acceptCount()
		for i := range 5 {
			if err := echoExact(within(t, ctx, 10*time.Second), addr, randomBytes(uint64(600+i), 128<<10)); err != nil {
				t.Fatalf("client %d after the kill: %v", i, err)
			}
		}
		if n := ob.acceptCount() - before; n != 5 {
			t.Errorf("surviving origin accepted %d of 5 clients after the kill", n)
		}
	})
}

// topoRelay stands between a dial side and a listen side on one port
// number: it relays TCP connections byte for byte, and relays UDP
// datagrams only once forwarding is switched on, so that QUIC looks
// blocked until then.
type topoRelay struct {
	addr     string
	tcp      net.Listener
	udp      *net.UDPConn
	upstream *net.UDPAddr
	target   string
	forward  atomic.Bool
	dropped  atomic.Int64

	mu      sync.Mutex
	closed  bool
	conns   map[io.Closer]bool
	clients map[string]*net.UDPConn
	wg      sync.WaitGroup
}

// topoStartRelay binds one loopback port number for both TCP and UDP and
// relays to target (a listen side serving both) until the test ends.
func topoStartRelay(t *testing.T, target string) *topoRelay {
	t.Helper()
	up, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	r := &topoRelay{upstream: up, target: target, conns: map[io.Closer]bool{}, clients: map[string]*net.UDPConn{}}
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err != nil {
			_ = ln.Close() // that UDP port is taken; try another number
			continue
		}
		r.tcp, r.udp, r.addr = ln, pc, loopback(port)
		break
	}
	if r.tcp == nil {
		t.Fatal("relay: found no port free for both TCP and UDP")
	}
	r.wg.Add(2)
	go r.serveTCP()
	go r.serveUDP()
	t.Cleanup(func() {
		r.mu.Lock()
		r.closed = true
		_ = r.tcp.Close() // stops serveTCP
		_ = r.udp.Close() // stops serveUDP
		for c := range r.conns {
			_ = c.Close()
		}
		for _, c := range r.clients {
			_ = c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

// track remembers c for closing at cleanup; false if the relay is closed.
func (r *topoRelay) track(c io.Closer) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		_ = c.Close()
		return false
	}
	r.conns[c] = true
	return true
}

func (r *topoRelay) serveTCP() {
	defer r.wg.Done()
	for {
		c, err := r.tcp.Accept()
		if err != nil {
			return
		}
		if !r.track(c) {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			u, err := net.Dial("tcp", r.target)
			if err != nil {
				_ = c.Close()
				return
			}
			if !r.track(u) {
				_ = c.Close()
				return
			}
			var cw sync.WaitGroup
			pipe := func(dst, src *net.TCPConn) {
				defer cw.Done()
				if _, err := io.Copy(dst, src); err == nil {
					_ = dst.CloseWrite() // pass the FIN on
				} else {
					_ = dst.Close()
					_ = src.Close()
				}
			}
			cw.Add(2)
			go pipe(u.(*net.TCPConn), c.(*net.TCPConn))
			go pipe(c.(*net.TCPConn), u.(*net.TCPConn))
			cw.Wait()
			_ = c.Close()
			_ = u.Close()
		}()
	}
}

func (r *topoRelay) serveUDP() {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := r.udp.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if !r.forward.Load() {
			r.dropped.Add(1)
			continue
		}
		up := r.upstreamFor(from)
		if up == nil {
			return
		}
		_, _ = up.Write(buf[:n]) // UDP: a lost datagram is QUIC's business
	}
}

// upstreamFor returns the socket that relays from's datagrams, one per
// client address, so that replies find their way back.
func (r *topoRelay) upstreamFor(from *net.UDPAddr) *net.UDPConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	if c, ok := r.clients[from.String()]; ok {
		return c
	}
	c, err := net.DialUDP("udp", nil, r.upstream)
	if err != nil {
		return nil
	}
	r.clients[from.String()] = c
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // e.g. ICMP unreachable while the upstream restarts
			}
			_, _ = r.udp.WriteToUDP(buf[:n], from)
		}
	}()
	return c
}

// TestAutoTransport checks PQT_TRANSPORT=auto on a dial side: it falls
// back to TCP when QUIC gets no answer, at once when the UDP port answers
// ICMP port unreachable, and moves back to QUIC once UDP works, without
// breaking a transfer that runs on the TCP tunnel meanwhile.
func TestAutoTransport(t *testing.T) {
	t.Run("fallback to tcp", func(t *testing.T) {
		ctx := testContext(t, 30*time.Second)
		o := startEcho(t)
		l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": o.addr()})
		relay := topoStartRelay(t, l.tunnelAddr) // drops every UDP datagram: no answer at all
		d := startDial(t, ctx, relay.addr, "auto", nil, map[string]string{"PQT_CONNECTIONS": "1", "PQT_FALLBACK_TIMEOUT": "1s"})
		wctx := within(t, ctx, 15*time.Second)
		fb := d.waitLog(t, wctx, msgIs("quic handshake timed out, falling back to tcp", "peer", relay.addr))
		conn := d.waitLog(t, wctx, msgIs("tunnel connected", "transport", "tcp", "group", "X25519MLKEM768"))
		l.waitLog(t, wctx, msgIs("tunnel connected", "transport", "tcp", "group", "X25519MLKEM768"))
		started := topoLogTime(t, d.logs(msgIs("pqtunnel starting"))[0])
		t.Logf("fallback: warned %s and connected over tcp %s after start (PQT_FALLBACK_TIMEOUT=1s; after=%s)",
			topoLogTime(t, fb).Sub(started).Round(time.Millisecond), topoLogTime(t, conn).Sub(started).Round(time.Millisecond), fb.str("after"))
		if took := topoLogTime(t, conn).Sub(started); took > 4*time.Second {
			t.Errorf("connected over tcp only %s after start, want about PQT_FALLBACK_TIMEOUT=1s", took)
		}
		if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(700, 1<<20)); err != nil {
			t.Fatalf("traffic over the fallback tunnel: %v", err)
		}
	})

	// A listen side with only the tcp transport: its host answers QUIC's
	// datagrams with ICMP port unreachable, and the dial side uses TCP at
	// once. Before, it waited as for silence: quic-go's handshake idle
	// timeout, half of PQT_FALLBACK_TIMEOUT (here 5s of 10s, so that the
	// bound below holds on a loaded machine and fails without the fix).
	t.Run("port unreachable", func(t *testing.T) {
		ctx := testContext(t, 30*time.Second)
		o := startEcho(t)
		l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": o.addr()})
		d := startDial(t, ctx, l.tunnelAddr, "auto", nil, map[string]string{"PQT_CONNECTIONS": "1", "PQT_FALLBACK_TIMEOUT": "10s"})
		started := topoLogTime(t, d.logs(msgIs("pqtunnel starting"))[0])
		// Clients refused while no tunnel is up are refused at once, so
		// the first one served marks when the tunnel became usable.
		var served time.Duration
		for served == 0 {
			err := echoExact(within(t, ctx, 2*time.Second), d.forward[""], []byte("first"))
			if err == nil {
				served = time.Since(started)
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("no client served: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("first client served %s after start (PQT_FALLBACK_TIMEOUT=10s)", served.Round(time.Millisecond))
		if served > 1500*time.Millisecond {
			t.Errorf("first client served %s after start, want well under the 5s QUIC waits for silence", served.Round(time.Millisecond))
		}
		fb := d.waitLog(t, within(t, ctx, 5*time.Second), msgIs("quic port unreachable, falling back to tcp", "peer", l.tunnelAddr))
		t.Logf("fell back %s after start", topoLogTime(t, fb).Sub(started).Round(time.Millisecond))
		if l := d.logs(msgIs("quic handshake timed out, falling back to tcp")); len(l) > 0 {
			t.Errorf("fell back by timeout, not at the ICMP answer: %v", l)
		}
	})

	t.Run("back to quic", func(t *testing.T) {
		ctx := testContext(t, 45*time.Second)
		o := startEcho(t)
		l := startListen(t, ctx, 0, "auto", map[string]string{"PQT_TARGET": o.addr()})
		relay := topoStartRelay(t, l.tunnelAddr)
		d := startDial(t, ctx, relay.addr, "auto", nil, map[string]string{
			"PQT_CONNECTIONS": "1", "PQT_FALLBACK_TIMEOUT": "1s", "PQT_QUIC_RETRY": "1s", "PQT_LOG_LEVEL": "debug",
		})
		wctx := within(t, ctx, 15*time.Second)
		d.waitLog(t, wctx, msgIs("quic handshake timed out, falling back to tcp"))
		tcpConn := d.waitLog(t, wctx, msgIs("tunnel connected", "transport", "tcp", "group", "X25519MLKEM768"))
		l.waitLog(t, wctx, msgIs("tunnel connected", "transport", "tcp"))
		if relay.dropped.Load() == 0 {
			t.Fatal("the relay dropped no UDP datagram: QUIC was never tried")
		}

		// A transfer of ~4 s on the TCP tunnel, across the switch.
		fctx := within(t, ctx, 30*time.Second)
		f, err := topoStartFlow(fctx, d.forward[""], randomBytes(701, 8<<20), 4*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		f.waitRead(t, fctx, 512<<10)

		switched := time.Now()
		relay.forward.Store(true)
		back := d.waitLog(t, within(t, ctx, 10*time.Second), msgIs("quic works again: moving tunnel back from tcp"))
		quicConn := d.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel connected", "transport", "quic", "group", "X25519MLKEM768"))
		l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel connected", "transport", "quic"))
		t.Logf("back to quic %s after UDP was let through (PQT_QUIC_RETRY=1s)", topoLogTime(t, quicConn).Sub(switched).Round(time.Millisecond))
		if back.str("tunnel") != tcpConn.str("tunnel") {
			t.Errorf("moved tunnel %s back, want the tcp tunnel %s", back.str("tunnel"), tcpConn.str("tunnel"))
		}
		if f.isDone() && f.end.Before(topoLogTime(t, back)) {
			t.Fatal("the transfer ended before the tunnel moved back to quic: the test proves nothing")
		}
		if err := f.wait(fctx); err != nil {
			t.Fatalf("transfer across the move back to quic: %v", err)
		}
		// The retired tcp tunnel closes once its stream is done.
		d.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel disconnected", "transport", "tcp"))

		if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(702, 1<<20)); err != nil {
			t.Fatalf("traffic after the move back to quic: %v", err)
		}
		closed := d.waitLogs(t, within(t, ctx, 5*time.Second), 2, msgIs("stream closed"))
		if got, want := closed[1].str("tunnel"), quicConn.str("tunnel"); got != want {
			t.Errorf("the new client went over tunnel %s, want the quic tunnel %s", got, want)
		}
		if got, want := closed[0].str("tunnel"), tcpConn.str("tunnel"); got != want {
			t.Errorf("the transfer across the switch went over tunnel %s, want the tcp tunnel %s", got, want)
		}
	})
}

// TestRestart kills one side with SIGKILL and starts it again: the other
// side notices within its idle timeout, refuses clients promptly meanwhile,
// and carries traffic again once a new process is up.
func TestRestart(t *testing.T) {
	timeouts := map[string]string{"PQT_IDLE_TIMEOUT": "3s", "PQT_KEEPALIVE": "1s"}
	transports(t, func(t *testing.T, transport string) {
		t.Run("listen side", func(t *testing.T) {
			ctx := testContext(t, 60*time.Second)
			o := startEcho(t)
			lenv := map[string]string{"PQT_TARGET": o.addr()}
			for k, v := range timeouts {
				lenv[k] = v
			}
			p := startPair(t, ctx, pairOptions{transport: transport, target: o.addr(), listenEnv: timeouts, dialEnv: timeouts})
			addr := p.dial.forward[""]
			if err := echoExact(within(t, ctx, 10*time.Second), addr, randomBytes(800, 256<<10)); err != nil {
				t.Fatal(err)
			}

			topoKill(t, ctx, p.listen.proc)
			// Right after the kill the dial side may still believe in its
			// tunnel: over QUIC a client waits at most for the idle timeout.
			limit := time.Second
			if transport == "quic" {
				limit = 5 * time.Second
			}
			start := time.Now()
			if err := expectClosedPromptly(ctx, addr, limit); err != nil {
				t.Fatalf("client right after the kill: %v", err)
			}
			t.Logf("client right after the kill closed in %s", time.Since(start).Round(time.Millisecond))
			p.dial.waitLogs(t, within(t, ctx, 3*time.Second+2*time.Second), 2, msgIs("tunnel disconnected"))
			for i := range 3 {
				if err := expectClosedPromptly(ctx, addr, time.Second); err != nil {
					t.Fatalf("client %d during the outage: %v", i, err)
				}
			}

			restarted := time.Now()
			startListen(t, ctx, topoPort(t, p.listen.tunnelAddr), transport, lenv)
			up := time.Since(restarted)
			lines := p.dial.waitLogs(t, within(t, ctx, 8*time.Second), 3, msgIs("tunnel connected", "transport", transport))
			reconnect := topoLogTime(t, lines[2]).Sub(restarted)
			t.Logf("dial side reconnected %s after the new listen side started (its start took %s)", reconnect.Round(time.Millisecond), up.Round(time.Millisecond))
			if reconnect > 7*time.Second {
				t.Errorf("reconnect took %s, want within ~6s", reconnect)
			}
			if err := echoExact(within(t, ctx, 10*time.Second), addr, randomBytes(801, 1<<20)); err != nil {
				t.Fatalf("traffic after the restart: %v", err)
			}
		})

		t.Run("reverse dial side", func(t *testing.T) {
			ctx := testContext(t, 60*time.Second)
			o := startEcho(t)
			l, d := topoReverse(t, ctx, transport, o.addr(), timeouts, timeouts)
			fwd := l.forward[""]
			if err := echoExact(within(t, ctx, 10*time.Second), fwd, randomBytes(810, 256<<10)); err != nil {
				t.Fatal(err)
			}
			killed := time.Now()
			topoKill(t, ctx, d.proc)
			l.waitLog(t, within(t, ctx, 3*time.Second+2*time.Second), msgIs("tunnel disconnected"))
			t.Logf("listen side noticed the killed dial side after %s", time.Since(killed).Round(time.Millisecond))
			for i := range 3 {
				if err := expectClosedPromptly(ctx, fwd, time.Second); err != nil {
					t.Fatalf("public client %d while no dial side is up: %v", i, err)
				}
			}
			l.waitLog(t, within(t, ctx, 2*time.Second), msgIs("client refused", "reason", "no tunnel connection up"))

			denv := map[string]string{"PQT_TARGET": o.addr(), "PQT_CONNECTIONS": "1"}
			for k, v := range timeouts {
				denv[k] = v
			}
			startDial(t, ctx, l.tunnelAddr, transport, []string{}, denv)
			l.waitLogs(t, within(t, ctx, 10*time.Second), 2, msgIs("tunnel connected", "transport", transport))
			if err := echoExact(within(t, ctx, 10*time.Second), fwd, randomBytes(811, 1<<20)); err != nil {
				t.Fatalf("public client after a new dial side connected: %v", err)
			}
		})
	})
}

// TestListenSideDrain sends SIGTERM to the listen side while a transfer
// runs through it: within PQT_DRAIN_TIMEOUT the transfer completes and the
// process exits 0; past it the process closes the stream and exits; and a
// second signal ends the drain at once.
func TestListenSideDrain(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		t.Run("completes", func(t *testing.T) {
			ctx := testContext(t, 45*time.Second)
			o := startEcho(t)
			p := startPair(t, ctx, pairOptions{transport: transport, target: o.addr(), listenEnv: map[string]string{"PQT_DRAIN_TIMEOUT": "10s"}})
			fctx := within(t, ctx, 30*time.Second)
			f, err := topoStartFlow(fctx, p.dial.forward[""], randomBytes(900, 8<<20), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			f.waitRead(t, fctx, 1<<20)
			p.listen.signal(t, syscall.SIGTERM)
			draining := p.listen.waitLog(t, within(t, ctx, 5*time.Second), msgIs("draining"))
			if n, _ := draining["streams"].(float64); n < 1 {
				t.Errorf("draining with %v streams, want the open transfer counted", draining["streams"])
			}
			if err := f.wait(fctx); err != nil {
				t.Fatalf("transfer across SIGTERM of the listen side: %v", err)
			}
			if code := p.listen.wait(t, within(t, ctx, 5*time.Second)); code != 0 {
				t.Errorf("listen side exited %d after the drain, want 0", code)
			}
			if len(p.listen.logs(msgIs("drained"))) != 1 {
				t.Errorf("listen side did not log a completed drain")
			}
		})

		t.Run("timeout", func(t *testing.T) {
			ctx := testContext(t, 45*time.Second)
			o := startEcho(t)
			p := startPair(t, ctx, pairOptions{transport: transport, target: o.addr(), listenEnv: map[string]string{"PQT_DRAIN_TIMEOUT": "1s"}})
			fctx := within(t, ctx, 30*time.Second)
			f, err := topoStartFlow(fctx, p.dial.forward[""], randomBytes(901, 4<<20), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			f.waitRead(t, fctx, 256<<10)
			start := time.Now()
			p.listen.signal(t, syscall.SIGTERM)
			limit := 3 * time.Second
			if raceEnabled {
				limit += time.Second // the race runtime sleeps 1s in a clean exit
			}
			code := p.listen.wait(t, within(t, ctx, limit))
			t.Logf("listen side exited %d, %s after SIGTERM with PQT_DRAIN_TIMEOUT=1s", code, time.Since(start).Round(time.Millisecond))
			p.listen.waitLog(t, ctx, msgIs("drain timeout: closing open streams"))
			if err := f.wait(within(t, ctx, 10*time.Second)); err == nil {
				t.Errorf("a 5 s transfer completed across a 1 s drain timeout")
			} else if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("transfer cut by the drain timeout hangs: %v", err)
			}
		})

		t.Run("second signal", func(t *testing.T) {
			ctx := testContext(t, 45*time.Second)
			o := startEcho(t)
			p := startPair(t, ctx, pairOptions{transport: transport, target: o.addr(), listenEnv: map[string]string{"PQT_DRAIN_TIMEOUT": "10s"}})
			fctx := within(t, ctx, 30*time.Second)
			f, err := topoStartFlow(fctx, p.dial.forward[""], randomBytes(902, 4<<20), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			f.waitRead(t, fctx, 256<<10)
			p.listen.signal(t, syscall.SIGTERM)
			p.listen.waitLog(t, within(t, ctx, 5*time.Second), msgIs("draining"))
			start := time.Now()
			p.listen.signal(t, syscall.SIGTERM)
			code := p.listen.wait(t, within(t, ctx, 2*time.Second))
			t.Logf("listen side exited %d, %s after the second signal", code, time.Since(start).Round(time.Millisecond))
			if code == 0 {
				t.Errorf("listen side exited 0 after a second signal cut its drain short, want non-zero")
			}
			if len(p.listen.logs(msgIs("second signal: exiting now"))) != 1 {
				t.Errorf("listen side did not log the second signal")
			}
			// Cut short: over QUIC the dial side notices only after its idle
			// timeout, as the process exits without closing its connections.
			_ = f.conn.Close()
			_ = f.wait(ctx)
		})
	})
}

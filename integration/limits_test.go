package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// limOneByte connects to addr, sends one byte and waits for the echo: the
// stream is then established end to end.
func limOneByte(ctx context.Context, addr string) (*net.TCPConn, error) {
	c, err := dialClient(ctx, addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{'x'}); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("write: %w", err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("read echo: %w", err)
	}
	return c, nil
}

// limFinish half-closes c and expects EOF and nothing else back.
func limFinish(c *net.TCPConn) error {
	defer c.Close()
	if err := c.CloseWrite(); err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return err
	}
	if n != 0 {
		return fmt.Errorf("%d unexpected bytes", n)
	}
	return nil
}

// TestLimitsMaxConnections runs a listen side with PQT_MAX_CONNECTIONS=1:
// a second dial side is refused with a log line naming the variable and
// counted as busy, while the first keeps carrying traffic; once the second
// is gone the listen side's goroutines are back where they were.
func TestLimitsMaxConnections(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	o := startEcho(t)
	lm := metAddr(t)
	l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": o.addr(), "PQT_MAX_CONNECTIONS": "1", "PQT_METRICS": lm})
	connected := msgIs("tunnel connected", "transport", "tcp", "group", "X25519MLKEM768")
	d1 := startDial(t, ctx, l.tunnelAddr, "tcp", nil, map[string]string{"PQT_CONNECTIONS": "1"})
	d1.waitLog(t, within(t, ctx, 20*time.Second), connected)
	l.waitLog(t, within(t, ctx, 5*time.Second), connected)
	if err := echoExact(within(t, ctx, 10*time.Second), d1.forward[""], randomBytes(70, 64<<10)); err != nil {
		t.Fatalf("first dial side: %v", err)
	}
	baseG := metGoroutines(t, ctx, "listen side", lm)

	d2 := startDial(t, ctx, l.tunnelAddr, "tcp", nil, map[string]string{"PQT_CONNECTIONS": "1"})
	refused := l.waitLog(t, within(t, ctx, 20*time.Second), msgIs("tunnel refused"))
	firstRefusal := time.Now()
	if r := refused.str("reason"); !strings.Contains(r, "PQT_MAX_CONNECTIONS") {
		t.Errorf("tunnel refused with reason %q, want it to name PQT_MAX_CONNECTIONS", r)
	}
	if refused.str("limit") != "1" {
		t.Errorf("tunnel refused with limit %q, want 1", refused.str("limit"))
	}
	metAwait(t, ctx, "listen side", lm, 5*time.Second, func(m metSet) error {
		return metAll(
			metExpect(m, true, 1, "pqtunnel_handshake_failures_total", "reason", "busy"),
			metExpect(m, false, 1, "pqtunnel_tunnels_up", "transport", "tcp", "group", "X25519MLKEM768"),
		)
	})

	// The first keeps working while the second knocks.
	for i := range 3 {
		if err := echoExact(within(t, ctx, 10*time.Second), d1.forward[""], randomBytes(uint64(71+i), 256<<10)); err != nil {
			t.Fatalf("first dial side while the second is refused: %v", err)
		}
	}
	if n := len(d1.logs(msgIs("tunnel disconnected"))); n != 0 {
		t.Errorf("first dial side lost its tunnel %d times", n)
	}
	// A refused dial side backs off instead of redialling at once: over
	// 3 s each of its two connection slots may try about five times
	// (delays from 100 ms doubling), not every 100-200 ms.
	<-time.After(time.Until(firstRefusal.Add(3 * time.Second)))
	if n := len(l.logs(msgIs("tunnel refused"))); n > 14 {
		t.Errorf("listen side refused the second dial side %d times in about 3 s: it redials without backing off", n)
	}
	d2.signal(t, syscall.SIGTERM)
	d2.wait(t, within(t, ctx, 15*time.Second))
	t.Logf("second dial side: %d tunnel connected, %d tunnel disconnected, %d tunnel dial failed lines; listen side: %d tunnel refused",
		len(d2.logs(msgIs("tunnel connected"))), len(d2.logs(msgIs("tunnel disconnected"))), len(d2.logs(msgIs("tunnel dial failed"))),
		len(l.logs(msgIs("tunnel refused"))))
	metSettle(t, ctx, "listen side", lm, baseG, 10, 10*time.Second)
	if err := echoExact(within(t, ctx, 10*time.Second), d1.forward[""], randomBytes(75, 64<<10)); err != nil {
		t.Fatalf("first dial side at the end: %v", err)
	}
}

// TestLimitsMaxTotalStreams runs a listen side with PQT_MAX_TOTAL_STREAMS=5:
// five idle streams are carried, a sixth client is closed promptly and the
// dial side logs the peer's busy answer; once the five close, new streams
// work again and the listen side's goroutines are back where they were.
func TestLimitsMaxTotalStreams(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		lm := metAddr(t)
		p := startPair(t, ctx, pairOptions{
			transport: transport,
			target:    o.addr(),
			listenEnv: map[string]string{"PQT_MAX_TOTAL_STREAMS": "5", "PQT_METRICS": lm},
		})
		addr := p.dial.forward[""]
		baseG := metGoroutines(t, ctx, "listen side", lm)

		sctx := within(t, ctx, 30*time.Second)
		var held []*net.TCPConn
		defer func() {
			for _, c := range held {
				_ = c.Close() // a failed test
			}
		}()
		for i := range 5 {
			c, err := limOneByte(sctx, addr)
			if err != nil {
				t.Fatalf("stream %d of 5: %v", i+1, err)
			}
			held = append(held, c)
		}
		metAwait(t, ctx, "listen side", lm, 5*time.Second, func(m metSet) error {
			return metExpect(m, false, 5, "pqtunnel_streams_active", "direction", "in")
		})

		if err := expectClosedPromptly(ctx, addr, time.Second); err != nil {
			t.Fatalf("sixth client: %v", err)
		}
		p.dial.waitLog(t, within(t, ctx, 5*time.Second), msgIs("stream refused by peer", "reason", "busy"))
		p.listen.waitLog(t, within(t, ctx, 5*time.Second), msgIs("stream refused", "reason", "busy"))
		for i, c := range held {
			// Still carried after the refusal.
			if _, err := c.Write([]byte{'y'}); err != nil {
				t.Fatalf("held stream %d: %v", i, err)
			}
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil || b[0] != 'y' {
				t.Fatalf("held stream %d after the refusal: %q %v", i, b, err)
			}
		}
		for i, c := range held {
			if err := limFinish(c); err != nil {
				t.Errorf("closing held stream %d: %v", i, err)
			}
		}
		held = nil
		metAwait(t, ctx, "listen side", lm, 10*time.Second, func(m metSet) error {
			return metAll(
				metExpect(m, false, 0, "pqtunnel_streams_active", "direction", "in"),
				metExpect(m, false, 1, "pqtunnel_streams_failed_total", "reason", "busy"),
			)
		})
		for i := range 6 {
			if err := echoExact(within(t, ctx, 10*time.Second), addr, randomBytes(uint64(80+i), 32<<10)); err != nil {
				t.Fatalf("stream %d after the five closed: %v", i, err)
			}
		}
		if n := o.acceptCount(); n != 11 {
			t.Errorf("origin accepted %d connections, want 11 (5 held, none for the refused one, 6 after)", n)
		}
		metSettle(t, ctx, "listen side", lm, baseG, 10, 10*time.Second)
	})
}

// TestLimitsMaxStreamsQUIC runs a QUIC listen side with PQT_MAX_STREAMS=8
// and one tunnel connection: of 20 concurrent clients at most 8 reach the
// origin at once; the others wait (QUIC stream credit is withheld) rather
// than being refused, and all 20 complete once the first ones finish.
func TestLimitsMaxStreamsQUIC(t *testing.T) {
	const clients, limit = 20, 8
	ctx := testContext(t, 60*time.Second)
	var mu sync.Mutex
	active, peak := 0, 0
	o := startOrigin(t, func(c *net.TCPConn) {
		mu.Lock()
		active++
		peak = max(peak, active)
		mu.Unlock()
		defer func() {
			mu.Lock()
			active--
			mu.Unlock()
		}()
		echo(c)
	})
	lm := metAddr(t)
	p := startPair(t, ctx, pairOptions{
		transport: "quic",
		target:    o.addr(),
		listenEnv: map[string]string{"PQT_MAX_STREAMS": "8", "PQT_METRICS": lm},
		dialEnv:   map[string]string{"PQT_CONNECTIONS": "1"},
	})
	addr := p.dial.forward[""]
	baseG := metGoroutines(t, ctx, "listen side", lm)

	cctx := within(t, ctx, 30*time.Second)
	release := make(chan struct{})
	echoed := make(chan int, clients)
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := limOneByte(cctx, addr)
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			echoed <- i
			<-release
			if err := limFinish(c); err != nil {
				errs <- fmt.Errorf("client %d finishing: %w", i, err)
			}
		}()
	}
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
		wg.Wait()
	}()

	got := 0
	for got < limit {
		select {
		case <-echoed:
			got++
		case err := <-errs:
			t.Fatal(err)
		case <-cctx.Done():
			t.Fatalf("only %d clients got through", got)
		}
	}
	// For a second, nothing more gets through and nobody is refused.
	window := time.NewTimer(time.Second)
	defer window.Stop()
	for waiting := true; waiting; {
		select {
		case i := <-echoed:
			t.Fatalf("client %d got through while %d streams were open", i, limit)
		case err := <-errs:
			t.Fatalf("a client beyond the limit was refused instead of waiting: %v", err)
		case <-window.C:
			waiting = false
		}
	}
	if n := o.acceptCount(); n != limit {
		t.Errorf("origin accepted %d connections with %d streams allowed", n, limit)
	}
	t.Logf("%d of %d clients through at once; the other %d wait", limit, clients, clients-limit)

	close(release)
	for got < clients {
		select {
		case <-echoed:
			got++
		case err := <-errs:
			t.Fatal(err)
		case <-cctx.Done():
			t.Fatalf("only %d of %d clients got through after the first ones finished", got, clients)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	mu.Lock()
	if peak > limit {
		t.Errorf("origin saw %d connections at once, want at most %d", peak, limit)
	}
	mu.Unlock()
	for _, s := range []*side{p.listen, p.dial} {
		if s.exited() {
			t.Errorf("%s exited", s.name)
		}
		if n := len(s.logs(msgIs("tunnel disconnected"))); n != 0 {
			t.Errorf("%s lost its tunnel", s.name)
		}
	}
	metSettle(t, ctx, "listen side", lm, baseG, 10, 10*time.Second)
}

// TestLimitsMaxHandshakes runs a listen side with PQT_MAX_HANDSHAKES=2 and
// PQT_HANDSHAKE_TIMEOUT=3s against 5 silent TCP connections: three are
// closed at once as busy, two at the timeout, each logged with its reason;
// a real dial side afterwards connects and carries traffic.
func TestLimitsMaxHandshakes(t *testing.T) {
	const silent, slots = 5, 2
	const timeout = 3 * time.Second
	ctx := testContext(t, 60*time.Second)
	o := startEcho(t)
	lm := metAddr(t)
	l := startListen(t, ctx, 0, "tcp", map[string]string{
		"PQT_TARGET":            o.addr(),
		"PQT_MAX_HANDSHAKES":    "2",
		"PQT_HANDSHAKE_TIMEOUT": timeout.String(),
		"PQT_METRICS":           lm,
		// Each failure's own line: past the first per source and reason
		// they are logged at DEBUG only.
		"PQT_LOG_LEVEL": "debug",
	})
	baseG := metGoroutines(t, ctx, "listen side", lm)

	type cut struct {
		after time.Duration
		err   error
	}
	cuts := make(chan cut, silent)
	var d net.Dialer
	for range silent {
		c, err := d.DialContext(within(t, ctx, 5*time.Second), "tcp", l.tunnelAddr)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		go func() {
			defer c.Close()
			_ = c.SetReadDeadline(start.Add(timeout + 3*time.Second)) // a connection left open shows as a timeout
			_, err := io.Copy(io.Discard, c)
			r := cut{after: time.Since(start)}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				r.err = fmt.Errorf("still open after %s", r.after.Round(time.Millisecond))
			}
			cuts <- r
		}()
	}
	var prompt, timedOut int
	var times []time.Duration
	for range silent {
		r := <-cuts
		if r.err != nil {
			t.Errorf("silent connection: %v", r.err)
			continue
		}
		times = append(times, r.after.Round(time.Millisecond))
		switch {
		case r.after < time.Second:
			prompt++
		case r.after <= timeout+time.Second:
			timedOut++
		default:
			t.Errorf("silent connection closed after %s, want at once (busy) or at the %s timeout", r.after, timeout)
		}
	}
	t.Logf("silent connections closed after %v", times)
	if prompt < silent-slots {
		t.Errorf("%d silent connections closed at once, want at least %d refused as busy", prompt, silent-slots)
	}
	busy := l.waitLogs(t, within(t, ctx, 5*time.Second), silent-slots, msgIs("tunnel handshake failed", "reason", "busy"))
	timeouts := l.waitLogs(t, within(t, ctx, 5*time.Second), slots, msgIs("tunnel handshake failed", "reason", "timeout"))
	if len(busy) != silent-slots || len(timeouts) != slots || prompt != silent-slots || timedOut != slots {
		t.Errorf("%d busy and %d timeout lines, %d closed at once and %d at the timeout; want %d busy and %d timeouts",
			len(busy), len(timeouts), prompt, timedOut, silent-slots, slots)
	}
	metAwait(t, ctx, "listen side", lm, 5*time.Second, func(m metSet) error {
		return metAll(
			metExpect(m, false, silent-slots, "pqtunnel_handshake_failures_total", "reason", "busy"),
			metExpect(m, false, slots, "pqtunnel_handshake_failures_total", "reason", "timeout"),
		)
	})

	dial := startDial(t, ctx, l.tunnelAddr, "tcp", nil, nil)
	connected := msgIs("tunnel connected", "transport", "tcp", "group", "X25519MLKEM768")
	dial.waitLogs(t, within(t, ctx, 20*time.Second), 2, connected)
	if err := echoExact(within(t, ctx, 10*time.Second), dial.forward[""], randomBytes(90, 256<<10)); err != nil {
		t.Fatalf("traffic after the silent connections: %v", err)
	}
	if n := len(dial.logs(msgIs("tunnel dial failed"))); n != 0 {
		t.Errorf("the real dial side failed %d handshakes", n)
	}
	if n := o.acceptCount(); n != 1 {
		t.Errorf("origin accepted %d connections, want 1", n)
	}
	dial.signal(t, syscall.SIGTERM)
	dial.wait(t, within(t, ctx, 15*time.Second))
	metSettle(t, ctx, "listen side", lm, baseG, 10, 10*time.Second)
}

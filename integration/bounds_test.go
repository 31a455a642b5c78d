package integration

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bndIdle opens n TCP connections from ip to addr that send nothing, and
// returns a function that waits for all of them to be closed by the peer
// (or for limit) and reports how long each stayed open.
func bndIdle(t *testing.T, ctx context.Context, ip, addr string, n int, limit time.Duration) func() []time.Duration {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	var mu sync.Mutex
	var open []time.Duration
	var wg sync.WaitGroup
	for range n {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("idle socket from %s: %v", ip, err)
		}
		start := time.Now()
		wg.Go(func() {
			defer c.Close()
			_ = c.SetReadDeadline(start.Add(limit)) // a socket left open shows as a timeout
			_, err := io.Copy(io.Discard, c)
			took := time.Since(start)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				took = limit
			}
			mu.Lock()
			open = append(open, took)
			mu.Unlock()
		})
	}
	return func() []time.Duration {
		wg.Wait()
		return open
	}
}

// bndCount returns how many of ds are at most d, and the longest.
func bndCount(ds []time.Duration, d time.Duration) (n int, longest time.Duration) {
	for _, x := range ds {
		if x <= d {
			n++
		}
		longest = max(longest, x)
	}
	return n, longest
}

// TestIdleTCPSocketsDoNotLockOutTunnels opens 64 TCP sockets that never
// send a byte against a listen side with PQT_MAX_HANDSHAKES=64 and a 10 s
// handshake timeout. From one address, 16 (a quarter) are held and the rest
// refused at once as busy; spread over four addresses they take every slot,
// and each is closed 2 s later for want of a first TLS record. Either way a
// legitimate dial side on the tcp transport connects within 3 s of starting.
func TestIdleTCPSocketsDoNotLockOutTunnels(t *testing.T) {
	const idle, slots, handshakeTimeout = 64, 64, 10 * time.Second
	ctx := testContext(t, 90*time.Second)
	o := startEcho(t)
	lm := metAddr(t)
	l := startListen(t, ctx, 0, "tcp", map[string]string{
		"PQT_TARGET":            o.addr(),
		"PQT_HANDSHAKE_TIMEOUT": handshakeTimeout.String(),
		"PQT_MAX_HANDSHAKES":    "64",
		"PQT_METRICS":           lm,
	})
	baseG := metGoroutines(t, ctx, "listen side", lm)
	connected := msgIs("tunnel connected", "transport", "tcp", "group", "X25519MLKEM768")
	limit := handshakeTimeout + 2*time.Second

	for _, phase := range []struct {
		name    string
		sources []string
		busy    int // refused at once
	}{
		{"one source", []string{"127.0.0.2"}, idle - slots/4},
		{"four sources", []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}, 0},
	} {
		t.Run(phase.name, func(t *testing.T) {
			before := metAwait(t, ctx, "listen side", lm, 5*time.Second, func(metSet) error { return nil })
			busyBefore, _ := before.value("pqtunnel_handshake_failures_total", "reason", "busy")
			timeoutBefore, _ := before.value("pqtunnel_handshake_failures_total", "reason", "timeout")
			var waits []func() []time.Duration
			for _, ip := range phase.sources {
				waits = append(waits, bndIdle(t, ctx, ip, l.tunnelAddr, idle/len(phase.sources), limit))
			}
			start := time.Now()
			dial := startDial(t, ctx, l.tunnelAddr, "tcp", nil, map[string]string{"PQT_CONNECTIONS": "1"})
			dial.waitLog(t, within(t, ctx, 15*time.Second), connected)
			took := time.Since(start)
			t.Logf("%d idle sockets from %d source(s): the dial side connected %s after it started", idle, len(phase.sources), took.Round(time.Millisecond))
			if took > 3*time.Second {
				t.Errorf("the dial side connected after %s, want within 3s", took.Round(time.Millisecond))
			}
			if err := echoExact(within(t, ctx, 10*time.Second), dial.forward[""], randomBytes(91, 64<<10)); err != nil {
				t.Errorf("traffic beside the idle sockets: %v", err)
			}
			var open []time.Duration
			for _, w := range waits {
				open = append(open, w()...)
			}
			atOnce, _ := bndCount(open, time.Second)
			byDeadline, longest := bndCount(open, 3*time.Second)
			t.Logf("idle sockets: %d closed within 1s, %d within 3s, longest open %s", atOnce, byDeadline, longest.Round(time.Millisecond))
			if atOnce != phase.busy || byDeadline != idle {
				t.Errorf("%d idle sockets closed at once and %d within 3s (longest %s); want %d at once and all %d within 3s",
					atOnce, byDeadline, longest.Round(time.Millisecond), phase.busy, idle)
			}
			metAwait(t, ctx, "listen side", lm, 5*time.Second, func(m metSet) error {
				return metAll(
					// The dial side's own attempts while every slot is taken add to busy.
					metExpect(m, true, busyBefore+float64(phase.busy), "pqtunnel_handshake_failures_total", "reason", "busy"),
					metExpect(m, false, timeoutBefore+float64(idle-phase.busy), "pqtunnel_handshake_failures_total", "reason", "timeout"),
				)
			})
			dial.signal(t, syscall.SIGTERM)
			dial.wait(t, within(t, ctx, 15*time.Second))
		})
	}
	metSettle(t, ctx, "listen side", lm, baseG, 10, 10*time.Second)
}

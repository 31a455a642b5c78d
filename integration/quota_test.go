package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// quoHold connects to addr from the loopback address ip, sends one byte and
// waits for the echo: the client then holds a stream end to end.
func quoHold(ctx context.Context, ip, addr string) (*net.TCPConn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := nc.(*net.TCPConn)
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl) // a failure shows as an I/O error
	}
	if _, err := c.Write([]byte{'x'}); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("read echo: %w", err)
	}
	return c, nil
}

// quoRefused connects from ip and expects the connection closed within a
// second with nothing echoed.
func quoRefused(ctx context.Context, ip, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := quoHold(ctx, ip, addr)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("client from %s was carried", ip)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("client from %s left hanging: %w", ip, err)
	}
	return nil
}

// TestClientsPerIPAreBounded gives a forward route PQT_MAX_CLIENTS_PER_IP=3:
// one source holding three idle clients gets its fourth refused at once and
// logged, while a client from another address is carried, and the source
// gets its slot back when one of its clients leaves.
func TestClientsPerIPAreBounded(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	p := startPair(t, ctx, pairOptions{
		transport: "tcp", target: startEcho(t).addr(),
		dialEnv: map[string]string{"PQT_MAX_CLIENTS_PER_IP": "3", "PQT_CONNECTIONS": "1"},
	})
	fwd := p.dial.forward[""]
	var held []*net.TCPConn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	for i := range 3 {
		c, err := quoHold(within(t, ctx, 20*time.Second), "127.0.0.1", fwd)
		if err != nil {
			t.Fatalf("client %d of 3 from 127.0.0.1: %v", i+1, err)
		}
		held = append(held, c)
	}
	if err := quoRefused(ctx, "127.0.0.1", fwd); err != nil {
		t.Errorf("fourth client from one address: %v", err)
	}
	line := p.dial.waitLog(t, within(t, ctx, 5*time.Second), msgIs("client refused", "reason", "PQT_MAX_CLIENTS_PER_IP reached"))
	if line.str("source") != "127.0.0.1/32" {
		t.Errorf("refusal names source %q, want 127.0.0.1/32", line.str("source"))
	}
	other, err := quoHold(within(t, ctx, 10*time.Second), "127.0.0.2", fwd)
	if err != nil {
		t.Fatalf("a client from another address while 127.0.0.1 holds its bound: %v", err)
	}
	_ = other.Close()
	_ = held[0].Close()
	held = held[1:]
	// The slot comes back once the dial side has seen the client leave.
	var again *net.TCPConn
	ok := metPoll(within(t, ctx, 10*time.Second), 50*time.Millisecond, func() bool {
		again, err = quoHold(within(t, ctx, 2*time.Second), "127.0.0.1", fwd)
		return err == nil
	})
	if !ok {
		t.Fatalf("127.0.0.1 got no slot back after one of its clients left: %v", err)
	}
	held = append(held, again)
}

// TestOnePeerCannotTakeEveryTunnelConnection runs a listen side with
// PQT_MAX_CONNECTIONS=4 accepting peers a and b: a asks for four tunnel
// connections and gets two (the default PQT_MAX_PEER_SHARE of 50 %), the
// others refused and logged, and b then connects both of its own.
func TestOnePeerCannotTakeEveryTunnelConnection(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 90*time.Second)
		idB := identityNamed(t, "authz-b")
		l := startListen(t, ctx, 0, transport, map[string]string{
			"PQT_TARGET":          startEcho(t).addr(),
			"PQT_PEERS":           "a=" + identityNamed(t, "dial").pin + ",b=" + idB.pin,
			"PQT_MAX_CONNECTIONS": "4",
		})
		startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_CONNECTIONS": "4"})
		wctx := within(t, ctx, 30*time.Second)
		l.waitLogs(t, wctx, 2, msgIs("tunnel connected", "peer", "a"))
		refused := l.waitLog(t, wctx, msgIs("tunnel refused", "peer", "a"))
		if !strings.Contains(refused.str("reason"), "share") || refused.str("limit") != "2" {
			t.Errorf("refusal reason %q limit %q, want the peer's share, limit 2", refused.str("reason"), refused.str("limit"))
		}
		b := startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_CONNECTIONS": "2", "PQT_IDENTITY": idB.path})
		b.waitLogs(t, wctx, 2, msgIs("tunnel connected", "transport", transport))
		l.waitLogs(t, wctx, 2, msgIs("tunnel connected", "peer", "b"))
		if err := echoExact(within(t, ctx, 10*time.Second), b.forward[""], randomBytes(41, 8<<10)); err != nil {
			t.Errorf("peer b's client: %v", err)
		}
		if n := len(l.logs(msgIs("tunnel connected", "peer", "a"))); n > 2 {
			t.Errorf("peer a holds %d tunnel connections, want at most 2 of PQT_MAX_CONNECTIONS=4", n)
		}
	})
}

// TestOnePeerCannotTakeEveryStream runs a listen side with
// PQT_MAX_TOTAL_STREAMS=4 accepting peers a and b: a holds two streams and
// its third is refused as busy, while b's client is carried.
func TestOnePeerCannotTakeEveryStream(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	idB := identityNamed(t, "authz-b")
	l := startListen(t, ctx, 0, "tcp", map[string]string{
		"PQT_TARGET":            startEcho(t).addr(),
		"PQT_PEERS":             "a=" + identityNamed(t, "dial").pin + ",b=" + idB.pin,
		"PQT_MAX_TOTAL_STREAMS": "4",
	})
	a := startDial(t, ctx, l.tunnelAddr, "tcp", nil, map[string]string{"PQT_CONNECTIONS": "1"})
	b := startDial(t, ctx, l.tunnelAddr, "tcp", nil, map[string]string{"PQT_CONNECTIONS": "1", "PQT_IDENTITY": idB.path})
	wctx := within(t, ctx, 20*time.Second)
	a.waitLog(t, wctx, msgIs("tunnel connected"))
	b.waitLog(t, wctx, msgIs("tunnel connected"))
	var held []*net.TCPConn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	for i := range 2 {
		c, err := quoHold(within(t, ctx, 10*time.Second), "127.0.0.1", a.forward[""])
		if err != nil {
			t.Fatalf("peer a's stream %d of 2: %v", i+1, err)
		}
		held = append(held, c)
	}
	if err := quoRefused(ctx, "127.0.0.1", a.forward[""]); err != nil {
		t.Errorf("peer a's third stream: %v", err)
	}
	told := a.waitLog(t, within(t, ctx, 5*time.Second), msgIs("stream refused by peer", "reason", "busy"))
	if !strings.Contains(told.str("err"), "PQT_MAX_PEER_SHARE") {
		t.Errorf("peer a was told %q, want its share named", told.str("err"))
	}
	l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("stream refused", "peer", "a", "reason", "busy"))
	for i := range 2 {
		c, err := quoHold(within(t, ctx, 10*time.Second), "127.0.0.1", b.forward[""])
		if err != nil {
			t.Fatalf("peer b's stream %d while a holds its share: %v", i+1, err)
		}
		held = append(held, c)
	}
}

// TestStreamIdleTimeout runs a listen side with PQT_STREAM_IDLE_TIMEOUT=1s:
// a client silent both ways is closed after about a second, logged, while
// one that sends a byte every 300 ms keeps its stream for 3 s and more.
func TestStreamIdleTimeout(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	p := startPair(t, ctx, pairOptions{
		transport: "quic", target: startEcho(t).addr(),
		listenEnv: map[string]string{"PQT_STREAM_IDLE_TIMEOUT": "1s"},
	})
	fwd := p.dial.forward[""]
	silent, err := quoHold(within(t, ctx, 10*time.Second), "127.0.0.1", fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	busy, err := quoHold(within(t, ctx, 10*time.Second), "127.0.0.1", fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	start := time.Now()
	closed := make(chan time.Duration, 1)
	go func() {
		_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.Copy(io.Discard, silent)
		closed <- time.Since(start)
	}()
	buf := make([]byte, 1)
	for time.Since(start) < 3*time.Second {
		time.Sleep(300 * time.Millisecond) // the client's pace, not a synchronisation
		_ = busy.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := busy.Write([]byte{'y'}); err != nil {
			t.Fatalf("the busy client after %s: %v", time.Since(start).Round(time.Millisecond), err)
		}
		if _, err := io.ReadFull(busy, buf); err != nil {
			t.Fatalf("the busy client after %s: %v", time.Since(start).Round(time.Millisecond), err)
		}
	}
	after := <-closed
	t.Logf("silent stream closed after %s", after.Round(time.Millisecond))
	if after < 900*time.Millisecond || after > 2500*time.Millisecond {
		t.Errorf("silent stream closed after %s, want about PQT_STREAM_IDLE_TIMEOUT=1s", after)
	}
	p.listen.waitLog(t, within(t, ctx, 5*time.Second), msgIs("stream closed: idle"))
}

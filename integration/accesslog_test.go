package integration

import (
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestAccessLogLinePerConnection runs both sides with PQT_ACCESS_LOG=on and
// checks that a proxied connection gives one "connection" line on each
// side, with the route, client, peer, bytes each way and end=closed, and
// that a connection to a route the peer lacks gives end=refused with its
// reason; the default (off) side of the second pair logs none.
func TestAccessLogLinePerConnection(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		on := map[string]string{"PQT_ACCESS_LOG": "on"}
		p := startPair(t, ctx, pairOptions{transport: transport, target: "echo=" + o.addr(), routes: []string{"echo", "nope"}, listenEnv: on, dialEnv: on})
		payload := randomBytes(7, 100_000)
		if err := echoExact(within(t, ctx, 10*time.Second), p.dial.forward["echo"], payload); err != nil {
			t.Fatal(err)
		}
		n := strconv.Itoa(len(payload))
		wctx := within(t, ctx, 10*time.Second)
		out := p.dial.waitLog(t, wctx, msgIs("connection", "direction", "out", "route", "echo", "bytes_up", n, "bytes_down", n, "end", "closed",
			"peer", identityNamed(t, "listen").pin, "transport", transport))
		in := p.listen.waitLog(t, wctx, msgIs("connection", "direction", "in", "route", "echo", "target", o.addr(), "bytes_up", n, "bytes_down", n, "end", "closed",
			"peer", identityNamed(t, "dial").pin, "transport", transport))
		if out.str("client") == "" || out.str("client") != in.str("client") {
			t.Errorf("client address: dial side %q, listen side %q; want the same, non-empty", out.str("client"), in.str("client"))
		}
		if d, err := time.ParseDuration(out.str("duration")); err != nil || d <= 0 {
			t.Errorf("duration %q: want a positive Go duration string (%v)", out.str("duration"), err)
		}

		if err := expectClosedPromptly(ctx, p.dial.forward["nope"], 5*time.Second); err != nil {
			t.Fatal(err)
		}
		p.dial.waitLog(t, wctx, msgIs("connection", "direction", "out", "route", "nope", "end", "refused", "reason", "unknown_route"))
		p.listen.waitLog(t, wctx, msgIs("connection", "direction", "in", "route", "nope", "end", "refused", "reason", "unknown_route"))
		if got := len(p.dial.logs(msgIs("connection"))); got != 2 {
			t.Errorf("dial side logged %d connection lines for 2 connections", got)
		}

		// Off by default: the same traffic, no line.
		q := startPair(t, ctx, pairOptions{transport: transport, target: "echo=" + o.addr(), routes: []string{"echo"}})
		if err := echoExact(within(t, ctx, 10*time.Second), q.dial.forward["echo"], payload); err != nil {
			t.Fatal(err)
		}
		q.dial.signal(t, syscall.SIGTERM)
		q.dial.wait(t, within(t, ctx, 10*time.Second))
		if l := q.dial.logs(msgIs("connection")); len(l) > 0 {
			t.Errorf("PQT_ACCESS_LOG unset, yet the dial side logged %v", l)
		}
	})
}

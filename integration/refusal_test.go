package integration

import (
	"testing"
	"time"
)

// TestOriginRefused checks per-stream refusals with one pair of processes:
// a route whose origin refuses and a route the listen side does not know
// each close the client promptly with a clear log line on both sides, and
// the tunnel stays up for a good route afterwards.
func TestOriginRefused(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		closed := loopback(freePort(t)) // nothing listens here
		p := startPair(t, ctx, pairOptions{
			transport: transport,
			target:    "good=" + o.addr() + ",closed=" + closed,
			routes:    []string{"closed", "good", "bad"},
		})
		connected := len(p.dial.logs(msgIs("tunnel connected")))

		t.Run("origin refused", func(t *testing.T) {
			if err := expectClosedPromptly(ctx, p.dial.forward["closed"], time.Second); err != nil {
				t.Fatal(err)
			}
			lctx := within(t, ctx, 5*time.Second)
			p.listen.waitLog(t, lctx, msgIs("stream refused", "reason", "origin refused", "route", "closed"))
			p.dial.waitLog(t, lctx, msgIs("stream refused by peer", "reason", "origin refused", "route", "closed"))
		})

		t.Run("unknown route", func(t *testing.T) {
			if err := expectClosedPromptly(ctx, p.dial.forward["bad"], time.Second); err != nil {
				t.Fatal(err)
			}
			lctx := within(t, ctx, 5*time.Second)
			p.listen.waitLog(t, lctx, msgIs("stream refused", "reason", "unknown route", "route", "bad"))
			p.dial.waitLog(t, lctx, msgIs("stream refused by peer", "reason", "unknown route", "route", "bad"))
		})

		t.Run("tunnel survives", func(t *testing.T) {
			if err := echoExact(within(t, ctx, 20*time.Second), p.dial.forward["good"], randomBytes(3, 1<<20)); err != nil {
				t.Fatalf("good route after refusals: %v", err)
			}
			if n := len(p.dial.logs(msgIs("tunnel disconnected"))) + len(p.listen.logs(msgIs("tunnel disconnected"))); n != 0 {
				t.Errorf("%d tunnel connections went down over refused streams", n)
			}
			if n := len(p.dial.logs(msgIs("tunnel connected"))); n != connected {
				t.Errorf("dial side reconnected: %d tunnel connections logged, want %d", n, connected)
			}
			if n := o.acceptCount(); n != 1 {
				t.Errorf("origin accepted %d connections, want 1 (only the good route)", n)
			}
		})
	})
}

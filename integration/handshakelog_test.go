package integration

import (
	"crypto/tls"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestHandshakeFailureFloodGivesBoundedLogs floods a listen side with 200
// classical-only TLS handshakes over TCP, 50 over QUIC and 100 TCP
// connections of junk: every failure is counted in
// pqtunnel_handshake_failures_total, but only a few lines are logged per
// message, and the summary line that follows accounts for the rest.
func TestHandshakeFailureFloodGivesBoundedLogs(t *testing.T) {
	ctx := testContext(t, 120*time.Second)
	lm := metAddr(t)
	l := startListen(t, ctx, 0, "auto", map[string]string{"PQT_TARGET": startEcho(t).addr(), "PQT_METRICS": lm})
	classical := classicalClient(t)
	const tcpHellos, quicHellos, junk = 200, 50, 100
	start := time.Now()
	for range tcpHellos {
		d := tls.Dialer{Config: classical.Clone()}
		if c, err := d.DialContext(within(t, ctx, 5*time.Second), "tcp", l.tunnelAddr); err == nil {
			_ = c.Close() // it should not exist
			t.Fatal("a classical-only client completed a handshake")
		}
	}
	for range quicHellos {
		if conn, err := quic.DialAddr(within(t, ctx, 5*time.Second), l.tunnelAddr, classical.Clone(), &quic.Config{HandshakeIdleTimeout: 3 * time.Second}); err == nil {
			_ = conn.CloseWithError(0, "") // it should not exist
			t.Fatal("a classical-only QUIC client completed a handshake")
		}
	}
	for i := range junk {
		c, err := dialClient(within(t, ctx, 5*time.Second), l.tunnelAddr)
		if err != nil {
			t.Fatal(err)
		}
		// A TLS record header announcing a ClientHello, then junk, then EOF.
		_, _ = c.Write(append([]byte{0x16, 0x03, 0x01, 0x00, 0x40}, randomBytes(uint64(500+i), 64)...)) // the listen side may close first
		_ = c.Close()
	}
	t.Logf("flood of %d failing handshakes took %s", tcpHellos+quicHellos+junk, time.Since(start).Round(time.Millisecond))

	// The junk connections' failures are counted as their handshakes end.
	var others float64
	metAwait(t, ctx, "listen side", lm, 15*time.Second, func(m metSet) error {
		others = 0
		for _, s := range m.find("pqtunnel_handshake_failures_total") {
			if s.labels["reason"] != "not_post_quantum" {
				others += s.value
			}
		}
		if others < junk {
			return fmt.Errorf("%g failures of the %d junk connections counted", others, junk)
		}
		return metExpect(m, false, tcpHellos+quicHellos, "pqtunnel_handshake_failures_total", "reason", "not_post_quantum")
	})
	// The summary of each interval comes within 10 s of it.
	summarized := func(about, reason string) int {
		n := 0
		for _, line := range l.logs(msgIs("tunnel handshake lines not logged", "about", about)) {
			if reason == "" || line.str("reason") == reason {
				c, _ := strconv.Atoi(line.str("count"))
				n += c
			}
		}
		return n
	}
	refused := func() int { return len(l.logs(msgIs("tunnel handshake refused", "reason", "not_post_quantum"))) }
	ok := metPoll(within(t, ctx, 25*time.Second), 200*time.Millisecond, func() bool {
		return refused()+summarized("tunnel handshake refused", "not_post_quantum") >= tcpHellos+quicHellos
	})
	lines, summed := refused(), summarized("tunnel handshake refused", "not_post_quantum")
	t.Logf("%d refusals: %d lines logged, %d in summaries; %g other failures: %d lines, %d in summaries",
		tcpHellos+quicHellos, lines, summed, others, len(l.logs(msgIs("tunnel handshake failed"))), summarized("tunnel handshake failed", ""))
	if !ok || lines+summed != tcpHellos+quicHellos {
		t.Errorf("%d refusal lines + %d summarized, want %d in all", lines, summed, tcpHellos+quicHellos)
	}
	// All from one source: one line per 10 s interval the flood touched.
	if limit := 1 + int(time.Since(start)/(10*time.Second)); lines < 1 || lines > limit+1 {
		t.Errorf("%d 'tunnel handshake refused' lines, want 1 to %d", lines, limit+1)
	}
	if failed := len(l.logs(msgIs("tunnel handshake failed"))); failed > 16 || others < junk {
		t.Errorf("%d 'tunnel handshake failed' lines for %g counted failures (%d junk connections), want at most 16 lines and every failure counted", failed, others, junk)
	}
	if _, err := l.awaitLogs(within(t, ctx, 15*time.Second), 1, msgIs("tunnel handshake lines not logged", "about", "tunnel handshake failed")); err != nil {
		t.Errorf("no summary of the junk connections' failures: %v", err)
	}
}

package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs 'pqtunnel demo': it pushes traffic byte-exact over both
// transports with a hybrid group, keeps running, and exits 0 on SIGINT.
func TestDemo(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	p := startProc(t, ctx, "demo", nil, pqtunnelBin, "demo")
	out := waitText(t, within(t, ctx, 30*time.Second), p, p.stdout, "running; press Ctrl-C to stop")

	if n := strings.Count(out, "byte-exact"); n != 2 {
		t.Errorf("demo printed byte-exact %d times, want 2 (one per transport)", n)
	}
	for _, tr := range []string{"quic", "tcp"} {
		if want := "transport=" + tr + " group=X25519MLKEM768"; !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}

	p.signal(t, syscall.SIGINT)
	start := time.Now()
	if code := p.wait(t, within(t, ctx, 5*time.Second)); code != 0 {
		t.Errorf("demo exited %d after SIGINT, want 0", code)
	}
	t.Logf("demo exited %s after SIGINT", time.Since(start).Round(time.Millisecond))
}

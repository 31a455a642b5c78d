package proxy

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/logtest"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// accessLines returns the recorded access-log lines.
func accessLines(r *logtest.Recorder) []string {
	var out []string
	for _, l := range r.All() {
		if strings.HasPrefix(l, "connection ") {
			out = append(out, l)
		}
	}
	return out
}

// waitAccess waits until r holds a line with every part.
func waitAccess(t *testing.T, r *logtest.Recorder, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range accessLines(r) {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(l, p)
			}
			if ok {
				return l
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no access-log line with %q; lines:\n%s", parts, strings.Join(r.All(), "\n"))
	return ""
}

// TestAccessLog checks that with AccessLog each side logs exactly one line
// per connection when it ends, with its bytes each way and how it ended,
// and that without it no such line is written.
func TestAccessLog(t *testing.T) {
	for _, on := range []bool{true, false} {
		name := map[bool]string{true: "on", false: "off"}[on]
		t.Run(name, func(t *testing.T) {
			tr := memtransport.New()
			echo := testutil.EchoOrigin(t)
			listenStore, dialStore := pinned.Stores(t, wire.ALPN)
			var listenLogs, dialLogs logtest.Recorder
			listen := runEngine(t, Config{
				Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tr,
				Target: []Route{{Name: "echo", Addr: echo}, {Name: "down", Addr: testutil.ClosedAddr(t)}},
				TLS:    listenStore, Logger: slog.New(&listenLogs), AccessLog: on,
			})
			dial := runEngine(t, Config{
				Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: tr, Connections: 1,
				Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}, {Name: "down", Addr: "127.0.0.1:0"}, {Name: "nope", Addr: "127.0.0.1:0"}},
				TLS:     dialStore, Logger: slog.New(&dialLogs), AccessLog: on,
			})
			waitTunnels(t, dial)
			fwd := dial.ForwardAddrs()
			if err := echoThrough(fwd[0].String(), make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			expectRefused(t, fwd[1].String())
			expectRefused(t, fwd[2].String())
			if !on {
				// The refusals' own WARN lines are there; wait for them, then
				// check that no access line came with them.
				deadline := time.Now().Add(10 * time.Second)
				for !dialLogs.Contains("stream refused by peer", "unknown route") && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if l := append(accessLines(&dialLogs), accessLines(&listenLogs)...); len(l) > 0 {
					t.Fatalf("access log off, yet lines were written:\n%s", strings.Join(l, "\n"))
				}
				return
			}
			pin := listenStore.Authenticator().Name()
			waitAccess(t, &dialLogs, "direction=out", "route=echo", "peer="+pin, "transport=mem", "bytes_up=1000", "bytes_down=1000", "end=closed")
			waitAccess(t, &listenLogs, "direction=in", "route=echo", "target="+echo, "bytes_up=1000", "bytes_down=1000", "end=closed")
			waitAccess(t, &dialLogs, "direction=out", "route=down", "end=refused", "reason=origin_refused")
			waitAccess(t, &listenLogs, "direction=in", "route=down", "end=refused", "reason=origin_refused")
			waitAccess(t, &dialLogs, "direction=out", "route=nope", "end=refused", "reason=unknown_route")
			waitAccess(t, &listenLogs, "direction=in", "route=nope", "end=refused", "reason=unknown_route")
			// Exactly one line per connection and side: three each.
			if n, m := len(accessLines(&dialLogs)), len(accessLines(&listenLogs)); n != 3 || m != 3 {
				t.Errorf("access lines: dial side %d, listen side %d; want 3 each:\n%s", n, m, strings.Join(append(accessLines(&dialLogs), accessLines(&listenLogs)...), "\n"))
			}
		})
	}
}

// TestAccessLogNoTunnel checks the line for a client refused before any
// tunnel carried it: no peer, reason no_tunnel.
func TestAccessLogNoTunnel(t *testing.T) {
	_, dialStore := pinned.Stores(t, wire.ALPN)
	var logs logtest.Recorder
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{testutil.ClosedAddr(t)}, Transport: memtransport.New(), Connections: 1,
		Forward: []Route{{Name: "web", Addr: "127.0.0.1:0"}},
		TLS:     dialStore, Logger: slog.New(&logs), AccessLog: true,
	})
	expectRefused(t, dial.ForwardAddrs()[0].String())
	l := waitAccess(t, &logs, "direction=out", "route=web", "end=refused", "reason=no_tunnel", "bytes_up=0")
	if strings.Contains(l, "peer=") {
		t.Errorf("a client no tunnel carried is logged with a peer: %s", l)
	}
}

package integration

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUnixSocketRoutes puts a redis-server that listens only on a Unix
// socket behind a unix:// target and reaches it with redis-cli through a
// unix:// forward route; a second route carries a half-closing echo from a
// Unix forward to a TCP origin. The forward socket is mode 0660 and gone
// after SIGTERM.
func TestUnixSocketRoutes(t *testing.T) {
	server := needTool(t, "redis-server", "redis-server")
	cli := needTool(t, "redis-cli", "redis-tools")
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 90*time.Second)
		dir := t.TempDir()
		redisSock, redisFwd, echoFwd := filepath.Join(dir, "redis.sock"), filepath.Join(dir, "fwd-redis.sock"), filepath.Join(dir, "fwd-echo.sock")
		rp := startProc(t, ctx, "redis-server", nil, server,
			"--port", "0", "--unixsocket", redisSock, "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", dir)
		waitText(t, within(t, ctx, 15*time.Second), rp, rp.stdout, "ready to accept connections at "+redisSock)
		echo := startEcho(t)

		l := startListen(t, ctx, 0, transport, map[string]string{"PQT_TARGET": "redis=unix://" + redisSock + ",echo=" + echo.addr(), "PQT_LOG_LEVEL": "debug"})
		self, peer := identityNamed(t, "dial"), identityNamed(t, "listen")
		env := sideEnv("dial", transport, self, peer, map[string]string{
			"PQT_TUNNEL":  l.tunnelAddr,
			"PQT_FORWARD": "redis=unix://" + redisFwd + ",echo=unix://" + echoFwd,
		})
		d := startProc(t, ctx, "dial side", env, pqtunnelBin)
		connected := msgIs("tunnel connected", "transport", transport, "group", "X25519MLKEM768")
		wctx := within(t, ctx, 20*time.Second)
		d.waitLogs(t, wctx, 2, msgIs("forwarding"))
		d.waitLogs(t, wctx, 2, connected)
		l.waitLogs(t, wctx, 2, connected)

		fi, err := os.Lstat(redisFwd)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
			t.Errorf("forward socket %s is %s, want a socket with mode 0660", redisFwd, fi.Mode())
		}

		run := func(stdin string, args ...string) string {
			t.Helper()
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(cctx, cli, args...)
			cmd.Stdin = strings.NewReader(stdin)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			return strings.TrimSpace(string(out))
		}
		value := "post-quantum-over-unix-" + transport
		if got := run("", "-s", redisFwd, "SET", "k", value); got != "OK" {
			t.Fatalf("SET through the tunnel: %q, want OK", got)
		}
		if got := run("", "-s", redisSock, "GET", "k"); got != value {
			t.Fatalf("GET on redis directly: %q, want %q", got, value)
		}
		var pipe strings.Builder
		for i := range 1000 {
			pipe.WriteString("SET key" + strings.Repeat("x", i%7) + " v\r\n")
		}
		if got := run(pipe.String(), "-s", redisFwd, "--pipe"); !strings.Contains(got, "errors: 0, replies: 1000") {
			t.Errorf("redis-cli --pipe through the tunnel: %q, want 1000 replies and no errors", got)
		}
		if got := run("", "-s", redisFwd, "GET", "key"); got != "v" {
			t.Errorf("GET of a piped key: %q, want v", got)
		}
		// The far side knows a Unix client only as local.
		l.waitLog(t, within(t, ctx, 10*time.Second), msgIs("stream closed", "client", "local"))

		if err := echoExactOn(within(t, ctx, 30*time.Second), "unix", echoFwd, randomBytes(1, 1<<20)); err != nil {
			t.Errorf("half-closing echo through a unix:// forward route: %v", err)
		}

		d.signal(t, syscall.SIGTERM)
		if code := d.wait(t, within(t, ctx, 20*time.Second)); code != 0 {
			t.Errorf("dial side exited with %d after SIGTERM, want 0", code)
		}
		for _, p := range []string{redisFwd, echoFwd} {
			if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("forward socket %s left after SIGTERM: %v", p, err)
			}
		}
	})
}

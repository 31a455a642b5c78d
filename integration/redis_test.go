package integration

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRedisThroughTunnel puts a real redis-server behind the tunnel and
// drives it with redis-cli and redis-benchmark through the forward port.
func TestRedisThroughTunnel(t *testing.T) {
	server := needTool(t, "redis-server", "redis-server")
	cli := needTool(t, "redis-cli", "redis-tools")
	bench, _ := exec.LookPath("redis-benchmark") // optional

	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 90*time.Second)
		port := freePort(t)
		rp := startProc(t, ctx, "redis-server", nil, server,
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
		waitText(t, within(t, ctx, 15*time.Second), rp, rp.stdout, "Ready to accept connections")

		p := startPair(t, ctx, pairOptions{transport: transport, target: loopback(port)})
		_, fport, _ := strings.Cut(p.dial.forward[""], ":")

		run := func(name string, args ...string) string {
			t.Helper()
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(cctx, name, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
			}
			return strings.TrimSpace(string(out))
		}
		value := "post-quantum-" + transport
		if got := run(cli, "-h", "127.0.0.1", "-p", fport, "SET", "k", value); got != "OK" {
			t.Fatalf("SET through the tunnel: %q, want OK", got)
		}
		if got := run(cli, "-h", "127.0.0.1", "-p", fport, "GET", "k"); got != value {
			t.Fatalf("GET through the tunnel: %q, want %q", got, value)
		}
		// The value really landed in the origin.
		if got := run(cli, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "GET", "k"); got != value {
			t.Fatalf("GET on redis directly: %q, want %q", got, value)
		}

		if bench == "" {
			t.Log("redis-benchmark not installed: skipping the benchmark part")
			return
		}
		out := run(bench, "-h", "127.0.0.1", "-p", fport, "-q", "-n", "2000", "-t", "set,get")
		var results []string
		for _, cmd := range []string{"SET", "GET"} {
			m := regexp.MustCompile(cmd + `: [0-9.]+ requests per second`).FindString(out)
			if m == "" {
				t.Errorf("redis-benchmark through the tunnel: no %s result in:\n%s", cmd, out)
			}
			results = append(results, m)
		}
		// redis-benchmark's SET writes key:__rand_int__; it must exist in the origin.
		if got := run(cli, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "EXISTS", "key:__rand_int__"); got != "1" {
			t.Errorf("redis-benchmark's key is not in the origin: EXISTS = %q", got)
		}
		t.Logf("redis-benchmark over %s: %s", transport, strings.Join(results, "; "))
	})
}

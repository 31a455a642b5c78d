package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// statusTunnel is the part of a /status.json tunnel the tests check.
type statusTunnel struct {
	Peer          string `json:"peer"`
	Transport     string `json:"transport"`
	Group         string `json:"group"`
	BytesSent     int64  `json:"bytes_sent"`
	BytesReceived int64  `json:"bytes_received"`
}

// runStatus runs 'pqtunnel status args...' with env and returns its exit
// code, stdout and stderr.
func runStatus(t *testing.T, ctx context.Context, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pqtunnelBin, append([]string{"status"}, args...)...)
	cmd.Env = testutil.ChildEnv(env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := cmd.ProcessState.ExitCode()
	if err != nil && code <= 0 {
		t.Fatalf("pqtunnel status %v: %v", args, err)
	}
	return code, stdout.String(), stderr.String()
}

// TestStatusShowsTheRunningTunnels runs both sides with traffic through them
// and asks each with 'pqtunnel status', in text and as JSON.
func TestStatusShowsTheRunningTunnels(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 90*time.Second)
		lm, dm := metAddr(t), metAddr(t)
		o := startEcho(t)
		p := startPair(t, ctx, pairOptions{
			transport: transport, target: "echo=" + o.addr(), routes: []string{"echo"},
			listenEnv: map[string]string{"PQT_METRICS": lm},
			dialEnv:   map[string]string{"PQT_METRICS": dm, "PQT_CONNECTIONS": "1"},
		})
		const size = 300 << 10
		if err := echoExact(within(t, ctx, 15*time.Second), p.dial.forward["echo"], randomBytes(41, size)); err != nil {
			t.Fatal(err)
		}
		listenPin, dialPin := identityNamed(t, "listen").pin, identityNamed(t, "dial").pin
		for _, side := range []struct {
			name, metrics, peer string
		}{{"dial side", dm, listenPin}, {"listen side", lm, dialPin}} {
			env := map[string]string{"PQT_METRICS": side.metrics}
			code, out, errOut := runStatus(t, ctx, env)
			if code != 0 {
				t.Fatalf("%s: pqtunnel status exited %d: %s", side.name, code, errOut)
			}
			t.Logf("%s: pqtunnel status:\n%s", side.name, out)
			for _, want := range []string{side.peer, " " + transport + " ", "X25519MLKEM768", "ML-DSA-65", "echo"} {
				if !strings.Contains(out, want) {
					t.Errorf("%s: pqtunnel status lacks %q", side.name, want)
				}
			}

			code, out, errOut = runStatus(t, ctx, env, "--json")
			if code != 0 {
				t.Fatalf("%s: pqtunnel status --json exited %d: %s", side.name, code, errOut)
			}
			var st struct {
				Tunnels []statusTunnel `json:"tunnels"`
			}
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("%s: pqtunnel status --json: %v\n%s", side.name, err, out)
			}
			var carried int64
			for _, tu := range st.Tunnels {
				if tu.Peer != side.peer || tu.Transport != transport || tu.Group != "X25519MLKEM768" {
					t.Errorf("%s: tunnel %+v, want peer %s over %s with X25519MLKEM768", side.name, tu, side.peer, transport)
				}
				if tu.BytesSent > 0 && tu.BytesReceived > 0 {
					carried += min(tu.BytesSent, tu.BytesReceived)
				}
			}
			if len(st.Tunnels) != 1 || carried < size {
				t.Errorf("%s: %d tunnels carried %d bytes each way, want 1 tunnel with at least %d", side.name, len(st.Tunnels), carried, size)
			}
		}
	})
}

// TestStatusWithoutARunningSide fails with a message saying what to do.
func TestStatusWithoutARunningSide(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	for _, tt := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"PQT_METRICS unset", nil, "PQT_METRICS"},
		{"nothing listening", map[string]string{"PQT_METRICS": metAddr(t)}, "not reachable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runStatus(t, ctx, tt.env)
			if code != 1 || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 saying %q", code, errOut, tt.want)
			}
		})
	}
}

// TestStatusOverTheControlSocket asks a side that runs without PQT_METRICS:
// 'pqtunnel status' with the same environment finds its control socket.
func TestStatusOverTheControlSocket(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	runtimeDir := t.TempDir()
	o := startEcho(t)
	target := "echo=" + o.addr()
	l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": target, "XDG_RUNTIME_DIR": runtimeDir})
	l.waitLog(t, within(t, ctx, 10*time.Second), msgIs("control socket listening"))
	env := map[string]string{"PQT_MODE": "listen", "PQT_TUNNEL": l.tunnelAddr, "PQT_TARGET": target, "XDG_RUNTIME_DIR": runtimeDir}
	code, out, errOut := runStatus(t, ctx, env)
	if code != 0 || !strings.Contains(out, "pqtunnel listen side, serving") || !strings.Contains(out, o.addr()) {
		t.Fatalf("pqtunnel status over the control socket: exit %d\n%s\n%s", code, out, errOut)
	}
	// Another environment names another side: nothing answers for it.
	env["PQT_TARGET"] = "other=" + o.addr()
	if code, _, errOut := runStatus(t, ctx, env); code != 1 || !strings.Contains(errOut, "control socket") {
		t.Errorf("status for another environment: exit %d, %q; want 1 naming the control socket", code, errOut)
	}
}

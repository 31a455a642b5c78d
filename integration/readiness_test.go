package integration

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"testing"
	"time"
)

// readyTargets is the targets part of /readyz.
type readyTargets struct {
	Ready   bool `json:"ready"`
	Targets []struct {
		Route        string     `json:"route"`
		Addr         string     `json:"addr"`
		State        string     `json:"state"`
		FailingSince *time.Time `json:"failing_since"`
		Error        string     `json:"error"`
	} `json:"targets"`
}

// awaitReadyz polls /readyz at addr until want accepts it and returns the
// last answer.
func awaitReadyz(t *testing.T, ctx context.Context, addr string, want func(code int, r readyTargets) bool) (int, readyTargets, string) {
	t.Helper()
	for {
		code, body, err := metGet(within(t, ctx, 5*time.Second), addr, "/readyz")
		var r readyTargets
		if err == nil {
			err = json.Unmarshal([]byte(body), &r)
		}
		if err == nil && want(code, r) {
			return code, r, body
		}
		select {
		case <-ctx.Done():
			t.Fatalf("/readyz at %s never became what the test waits for; last %d %s (%v)", addr, code, body, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestReadyzFollowsTheTarget starts a listen side whose only target's origin
// is down, with no client and no tunnel: /readyz says 503 with the target
// down once PQT_READY_TARGET_DOWN has passed, and 200 again once the origin
// listens; /status.json shows the target's state. With the check off
// (PQT_READY_TARGET_DOWN=0) the same side stays ready.
func TestReadyzFollowsTheTarget(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	originAddr := loopback(freePort(t))
	lm := metAddr(t)
	start := time.Now()
	startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": "app=" + originAddr, "PQT_METRICS": lm, "PQT_READY_TARGET_DOWN": "1s"})
	code, r, body := awaitReadyz(t, ctx, lm, func(code int, r readyTargets) bool { return !r.Ready })
	took := time.Since(start)
	t.Logf("not ready after %s: %s", took.Round(time.Millisecond), body)
	if code != http.StatusServiceUnavailable || len(r.Targets) != 1 {
		t.Fatalf("/readyz %d %s, want 503 with one target", code, body)
	}
	if ts := r.Targets[0]; ts.Route != "app" || ts.Addr != originAddr || ts.State != "down" || ts.FailingSince == nil || ts.Error == "" {
		t.Errorf("target %+v, want app at %s, down, with failing_since and the error", ts, originAddr)
	}
	if took < time.Second {
		t.Errorf("not ready %s after start, before PQT_READY_TARGET_DOWN=1s", took)
	}
	_, st, err := metGet(within(t, ctx, 5*time.Second), lm, "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	var status struct {
		Routes []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		} `json:"routes"`
	}
	if err := json.Unmarshal([]byte(st), &status); err != nil || len(status.Routes) != 1 || status.Routes[0].State != "down" {
		t.Errorf("/status.json routes %+v (%v), want app down", status.Routes, err)
	}

	ln, err := net.Listen("tcp", originAddr)
	if err != nil {
		t.Fatalf("origin: %v", err)
	}
	defer ln.Close()
	code, r, body = awaitReadyz(t, ctx, lm, func(code int, r readyTargets) bool { return r.Ready })
	if code != http.StatusOK || r.Targets[0].State != "up" {
		t.Errorf("/readyz once the origin listens: %d %s, want 200 with the target up", code, body)
	}

	off := metAddr(t)
	startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": "app=" + loopback(freePort(t)), "PQT_METRICS": off, "PQT_READY_TARGET_DOWN": "0"})
	awaitReadyz(t, ctx, off, func(code int, r readyTargets) bool { return r.Ready })
	time.Sleep(1500 * time.Millisecond) // longer than the threshold would have been
	if code, r, body := awaitReadyz(t, ctx, off, func(int, readyTargets) bool { return true }); code != http.StatusOK || !r.Ready || r.Targets[0].State != "unknown" {
		t.Errorf("PQT_READY_TARGET_DOWN=0: /readyz %d %s, want 200, the target never dialled", code, body)
	}
}

package proxy

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

func TestTargetState(t *testing.T) {
	now := time.Now()
	failed := &DialResult{Time: now, OK: false}
	ok := &DialResult{Time: now, OK: true}
	for _, tt := range []struct {
		name      string
		last      *DialResult
		since     time.Time
		downAfter time.Duration
		want      string
	}{
		{"no dial yet", nil, time.Time{}, time.Second, TargetUnknown},
		{"last dial worked", ok, time.Time{}, time.Second, TargetUp},
		{"failing briefly", failed, now.Add(-500 * time.Millisecond), time.Second, TargetFailing},
		{"failing for the threshold", failed, now.Add(-time.Second), time.Second, TargetDown},
		{"check off", failed, now.Add(-time.Hour), -1, TargetFailing},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := targetState(tt.last, tt.since, now, tt.downAfter); got != tt.want {
				t.Errorf("state %q, want %q", got, tt.want)
			}
		})
	}
}

// waitReady waits until e's readiness is want and returns it.
func waitReady(t *testing.T, e *Engine, want bool, within time.Duration) Readiness {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := e.Readiness()
		if r.Ready == want {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("readiness %t after %s, want %t: %+v", r.Ready, within, want, r.Targets)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A listen side whose only target stops answering becomes not ready once
// the probe has seen it fail for ReadyTargetDown, with no client at all,
// and ready again once the origin is back.
func TestReadinessFollowsTheTarget(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	listenStore, _ := pinned.Stores(t, wire.ALPN)
	e := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: memtransport.New(),
		Target: []Route{{Name: "app", Addr: addr}}, TLS: listenStore, ReadyTargetDown: 400 * time.Millisecond,
	})
	r := waitReady(t, e, true, 5*time.Second)
	if len(r.Targets) != 1 || r.Targets[0].Route != "app" {
		t.Fatalf("targets %+v, want app", r.Targets)
	}
	_ = ln.Close()
	start := time.Now()
	r = waitReady(t, e, false, 5*time.Second)
	took := time.Since(start)
	if ts := r.Targets[0]; ts.State != TargetDown || ts.FailingSince == nil || ts.Error == "" {
		t.Errorf("target %+v, want down with the time it began to fail and the error", ts)
	}
	if took < 400*time.Millisecond {
		t.Errorf("not ready %s after the origin closed, before the 400ms threshold", took)
	}
	st := e.Status()
	if rs := st.Routes[0]; rs.State != TargetDown || rs.LastDial == nil || !rs.LastDial.Probe {
		t.Errorf("status route %+v, want down after a probe dial", rs)
	}
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the origin's port was taken meanwhile: %v", err)
	}
	defer ln2.Close()
	r = waitReady(t, e, true, 5*time.Second)
	if r.Targets[0].State != TargetUp {
		t.Errorf("target %+v after the origin came back, want up", r.Targets[0])
	}
}

// With the check off (negative), a target that cannot be dialled never
// makes the side unready, and nothing probes it however often readiness
// is asked.
func TestReadinessTargetCheckOff(t *testing.T) {
	listenStore, _ := pinned.Stores(t, wire.ALPN)
	origin := startCountingOrigin(t)
	e := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: memtransport.New(),
		Target: []Route{{Name: "app", Addr: origin.addr}}, TLS: listenStore, ReadyTargetDown: -1,
	})
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if r := e.Readiness(); !r.Ready || r.Targets[0].State != TargetUnknown {
			t.Fatalf("readiness %t, target %+v; want ready and no dial", r.Ready, r.Targets[0])
		}
	}
	if n := origin.accepted.Load(); n != 0 {
		t.Errorf("the origin saw %d probe connections with the check off", n)
	}
}

// Nothing probes a target while readiness is not asked: an origin sees
// only its clients' connections. The first question starts a probe.
func TestReadinessProbesOnlyWhenAsked(t *testing.T) {
	listenStore, _ := pinned.Stores(t, wire.ALPN)
	origin := startCountingOrigin(t)
	e := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: memtransport.New(),
		Target: []Route{{Name: "app", Addr: origin.addr}}, TLS: listenStore, ReadyTargetDown: 200 * time.Millisecond,
	})
	time.Sleep(500 * time.Millisecond) // five probe intervals, had it probed by itself
	if n := origin.accepted.Load(); n != 0 {
		t.Fatalf("the origin saw %d probe connections while nobody asked readiness", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.Readiness().Targets[0].State != TargetUp {
		if time.Now().After(deadline) {
			t.Fatal("asking readiness did not probe the target")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := origin.accepted.Load(); n < 1 {
		t.Errorf("target up, yet the origin saw %d connections", n)
	}
}

// countingOrigin accepts and closes connections, counting them.
type countingOrigin struct {
	addr     string
	accepted atomic.Int64
}

func startCountingOrigin(t *testing.T) *countingOrigin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &countingOrigin{addr: ln.Addr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			o.accepted.Add(1)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return o
}

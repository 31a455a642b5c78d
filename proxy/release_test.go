package proxy

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/logtest"
)

func TestBurstTrackerReleasesOnceABurstEnds(t *testing.T) {
	steps := []struct {
		n    int
		want bool
	}{
		{0, false},
		{500, false},
		{10000, false}, // the burst
		{9000, false},  // fell by releaseAfter but not to half
		{5000, true},   // half the peak: release
		{4990, false},  // the new peak is 5000: no repeat on small changes
		{4000, false},
		{2400, true}, // 2600 fewer, and under half of 5000
		{2400, false},
		{1500, false}, // only 900 fewer than the new peak 2400
		{1450, false},
		{300, true}, // 2100 fewer than 2400
	}
	var b burstTracker
	for i, s := range steps {
		if got := b.observe(s.n); got != s.want {
			t.Fatalf("step %d: observe(%d) = %v, want %v (peak %d)", i, s.n, got, s.want, b.peak)
		}
	}
}

func TestBurstTrackerIgnoresSmallLoads(t *testing.T) {
	var b burstTracker
	for range 3 {
		for _, n := range []int{0, releaseAfter - 1, 0} {
			if b.observe(n) {
				t.Fatalf("observe(%d) released memory for a burst smaller than releaseAfter", n)
			}
		}
	}
}

func TestReleaseMemoryRunsWhenABurstEnds(t *testing.T) {
	var logs logtest.Recorder
	e := &Engine{log: slog.New(&logs), streams: newInflight()}
	for range releaseAfter + 10 {
		e.streams.add()
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.loops.Add(1)
	go e.routineReleaseMemory(ctx, 5*time.Millisecond)
	defer func() {
		cancel()
		e.loops.Wait()
	}()
	time.Sleep(30 * time.Millisecond) // the routine sees the peak
	if logs.Contains("released memory") {
		t.Fatal("memory released while the streams are still open")
	}
	for range releaseAfter + 10 {
		e.streams.done()
	}
	deadline := time.Now().Add(5 * time.Second)
	for !logs.Contains("released memory after a burst of streams", "streams=0") {
		if time.Now().After(deadline) {
			t.Fatalf("no release after the burst ended; logs: %q", logs.All())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

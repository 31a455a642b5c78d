package proxy

import "testing"

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

package proxy

import (
	"testing"
	"time"
)

func TestBackoffGrowsAndCaps(t *testing.T) {
	const lo, hi = 200 * time.Millisecond, 5 * time.Second
	tests := []struct {
		name string
		rand func(n int64) int64 // draws from [0, n)
		// want is the delay for ceiling c.
		want func(c time.Duration) time.Duration
	}{
		{"lowest draw", func(int64) int64 { return 0 }, func(c time.Duration) time.Duration { return c / 2 }},
		{"highest draw", func(n int64) int64 { return n - 1 }, func(c time.Duration) time.Duration { return c/2 + c/2 }},
		{"middle draw", func(n int64) int64 { return n / 2 }, func(c time.Duration) time.Duration { return c/2 + (c/2+1)/2 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls []int64
			b := backoff{Min: lo, Max: hi, rand: func(n int64) int64 {
				calls = append(calls, n)
				r := tt.rand(n)
				if r < 0 || r >= n {
					t.Fatalf("test rand out of range")
				}
				return r
			}}
			ceiling := lo
			for i := range 40 {
				d := b.Next()
				if want := tt.want(ceiling); d != want {
					t.Fatalf("attempt %d: delay %v, want %v (ceiling %v)", i, d, want, ceiling)
				}
				if d <= 0 || d > hi {
					t.Fatalf("attempt %d: delay %v outside (0, %v]", i, d, hi)
				}
				if n := calls[len(calls)-1]; n != int64(ceiling/2)+1 {
					t.Fatalf("attempt %d: rand asked for [0, %d), want [0, %d)", i, n, int64(ceiling/2)+1)
				}
				ceiling = min(2*ceiling, hi)
			}
			b.Reset()
			if d := b.Next(); d != tt.want(lo) {
				t.Fatalf("after Reset: delay %v, want %v", d, tt.want(lo))
			}
			if d := b.Next(); d != tt.want(2*lo) {
				t.Fatalf("second after Reset: delay %v, want %v", d, tt.want(2*lo))
			}
		})
	}
}

func TestBackoffDefaultRandInRange(t *testing.T) {
	const lo, hi = 10 * time.Millisecond, 80 * time.Millisecond
	b := backoff{Min: lo, Max: hi}
	seenAboveHalf := false
	for i := range 200 {
		if i%5 == 0 {
			b.Reset()
		}
		ceiling := min(lo<<(i%5), hi)
		d := b.Next()
		if d < ceiling/2 || d > ceiling {
			t.Fatalf("draw %d: delay %v outside [%v, %v]", i, d, ceiling/2, ceiling)
		}
		if d > ceiling/2 {
			seenAboveHalf = true
		}
	}
	if !seenAboveHalf {
		t.Fatal("200 delays without any jitter")
	}
}

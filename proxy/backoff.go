package proxy

import (
	"math/rand/v2"
	"time"
)

// backoff yields capped exponential delays with full jitter, so that many
// dial sides that lost the same peer do not reconnect in lockstep.
type backoff struct {
	Min, Max time.Duration
	attempt  int
	// rand returns a value in [0, n); nil means math/rand/v2.
	rand func(n int64) int64
}

// Next returns the delay before the next attempt and advances.
func (b *backoff) Next() time.Duration {
	ceiling := b.Max
	if shift := b.attempt; shift < 62 && b.Min > 0 && b.Min <= b.Max>>shift {
		ceiling = b.Min << shift
	}
	b.attempt++
	r := b.rand
	if r == nil {
		r = rand.Int64N
	}
	// Half fixed, half random: never zero, never above the cap.
	half := max(int64(ceiling)/2, 1)
	return time.Duration(half + r(half+1))
}

// Reset starts over after a success.
func (b *backoff) Reset() { b.attempt = 0 }

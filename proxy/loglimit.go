package proxy

import (
	"sync"
	"time"
)

// logLimiter keeps refusals that repeat per connection (every client during
// an outage, every stream past a limit) to one log line per reason per
// interval; the metrics still count each one.
type logLimiter struct {
	mu       sync.Mutex
	interval time.Duration
	last     map[string]time.Time
	dropped  map[string]int
}

func newLogLimiter(interval time.Duration) *logLimiter {
	return &logLimiter{interval: interval, last: map[string]time.Time{}, dropped: map[string]int{}}
}

// allow reports whether a line for key may be logged now, and how many were
// suppressed since the last one that was.
func (l *logLimiter) allow(key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if t, seen := l.last[key]; seen && now.Sub(t) < l.interval {
		l.dropped[key]++
		return false, 0
	}
	l.last[key] = now
	suppressed = l.dropped[key]
	delete(l.dropped, key)
	return true, suppressed
}

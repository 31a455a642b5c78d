package proxy

import (
	"context"
	"runtime"
	"runtime/debug"
	"time"
)

// releaseAfter is how far the number of streams in flight must fall from its
// peak before freed memory is handed back: about 15 MiB of idle streams.
const releaseAfter = 1000

// burstTracker decides when a burst of streams has ended. Go's runtime
// returns freed memory to the operating system over minutes; a sidecar that
// held ten thousand connections for a moment should not keep their memory
// that long, nor pay a forced collection on every small change.
type burstTracker struct{ peak int }

// observe takes the streams in flight now and reports whether the memory
// they held should be released: the count fell by at least releaseAfter and
// to half its peak or less.
func (b *burstTracker) observe(n int) bool {
	b.peak = max(b.peak, n)
	if b.peak-n >= releaseAfter && n <= b.peak/2 {
		b.peak = n
		return true
	}
	return false
}

// routineReleaseMemory checks every interval and releases memory after a
// burst ends, until ctx ends.
func (e *Engine) routineReleaseMemory(ctx context.Context, interval time.Duration) {
	defer e.loops.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	var b burstTracker
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n := e.streams.count(); b.observe(n) {
				// The first collection only moves pooled buffers aside
				// (sync.Pool keeps them one cycle more); the second frees them.
				runtime.GC()
				debug.FreeOSMemory()
				e.log.Debug("released memory after a burst of streams", "streams", n)
			}
		}
	}
}

package proxy

import (
	"sync"
	"time"
)

// inflight counts the streams being handled. Unlike a sync.WaitGroup it
// may be waited on while streams still arrive, which draining needs.
type inflight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed while n == 0
}

func newInflight() *inflight {
	f := &inflight{idle: make(chan struct{})}
	close(f.idle)
	return f
}

func (f *inflight) add() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		f.idle = make(chan struct{})
	}
	f.n++
}

func (f *inflight) done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n--
	if f.n == 0 {
		close(f.idle)
	}
}

func (f *inflight) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// wait returns true once no stream is in flight, or false after timeout
// (zero waits without a bound).
func (f *inflight) wait(timeout time.Duration) bool {
	f.mu.Lock()
	idle := f.idle
	f.mu.Unlock()
	if timeout <= 0 {
		<-idle
		return true
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}

package proxy

import "sync"

// inflight counts the streams being handled. Unlike a sync.WaitGroup it
// may be waited on while streams still arrive, which draining needs.
type inflight struct {
	mu     sync.Mutex
	n      int
	idleCh chan struct{} // closed while n == 0
}

func newInflight() *inflight {
	f := &inflight{idleCh: make(chan struct{})}
	close(f.idleCh)
	return f
}

func (f *inflight) add() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		f.idleCh = make(chan struct{})
	}
	f.n++
}

func (f *inflight) done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n--
	if f.n == 0 {
		close(f.idleCh)
	}
}

func (f *inflight) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// idle returns a channel closed once no stream is in flight; a stream
// added later does not reopen it.
func (f *inflight) idle() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.idleCh
}

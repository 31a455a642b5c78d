// Package accept is what every listener of a transport shares: the queue
// that Accept reads, the bound on handshakes in progress, and a Close that
// stops them all.
package accept

import (
	"context"
	"sync"

	"github.com/pqtunnel/pqtunnel/transport"
)

// Core is embedded by listeners; it implements Listener.Accept.
type Core struct {
	ch     chan transport.Session
	closed chan struct{}
	// Sem holds a token per handshake in progress; its capacity is the bound.
	Sem chan struct{}
	// Ctx ends when the listener closes; handshakes derive from it.
	Ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
	// WG counts the accept loop and handshakes; Shutdown waits for them.
	WG sync.WaitGroup
}

// New returns a Core allowing maxHandshakes handshakes at once.
func New(maxHandshakes int) *Core {
	l := &Core{ch: make(chan transport.Session), closed: make(chan struct{}), Sem: make(chan struct{}, maxHandshakes)}
	l.Ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// Accept returns the next delivered session, transport.ErrClosed after
// Shutdown, or ctx's error.
func (l *Core) Accept(ctx context.Context) (transport.Session, error) {
	select {
	case s := <-l.ch:
		return s, nil
	case <-l.closed:
		return nil, transport.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Deliver passes s to Accept, or closes it if the listener closes first.
func (l *Core) Deliver(s transport.Session) {
	select {
	case l.ch <- s:
	case <-l.closed:
		_ = s.Close() // nobody will use it
	}
}

// Closed is closed once Shutdown began.
func (l *Core) Closed() <-chan struct{} { return l.closed }

// Shutdown stops accepting, closes the socket once with closeSocket, and
// waits for the accept loop and handshakes to end.
func (l *Core) Shutdown(closeSocket func() error) error {
	var err error
	l.once.Do(func() {
		close(l.closed)
		l.cancel()
		err = closeSocket()
	})
	l.WG.Wait()
	return err
}

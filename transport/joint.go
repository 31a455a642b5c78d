package transport

import (
	"context"
	"net"
	"sync"
)

// jointListener serves the sessions of several listeners through one
// Accept, for a Fallback listening on both of its transports.
type jointListener struct {
	parts  []Listener
	ch     chan Session
	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

func newJointListener(parts ...Listener) *jointListener {
	l := &jointListener{parts: parts, ch: make(chan Session), closed: make(chan struct{})}
	for _, p := range parts {
		l.wg.Add(1)
		go l.routineForward(p)
	}
	return l
}

func (l *jointListener) routineForward(p Listener) {
	defer l.wg.Done()
	for {
		s, err := p.Accept(context.Background())
		if err != nil {
			return // only ErrClosed: Accept has no other failure
		}
		select {
		case l.ch <- s:
		case <-l.closed:
			_ = s.Close() // nobody will use it
			return
		}
	}
}

func (l *jointListener) Accept(ctx context.Context) (Session, error) {
	select {
	case s := <-l.ch:
		return s, nil
	case <-l.closed:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close closes every part and waits for them; the first error is returned.
func (l *jointListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.closed)
		for _, p := range l.parts {
			if perr := p.Close(); err == nil {
				err = perr
			}
		}
	})
	l.wg.Wait()
	return err
}

// Addr is the first part's address; the others share its port number.
func (l *jointListener) Addr() net.Addr    { return l.parts[0].Addr() }
func (l *jointListener) Transport() string { return FallbackName }

// Parts are the listeners behind it, for logging each.
func (l *jointListener) Parts() []Listener { return l.parts }

// Parts returns the listeners that ln serves through, or ln itself.
func Parts(ln Listener) []Listener {
	if j, ok := ln.(interface{ Parts() []Listener }); ok {
		return j.Parts()
	}
	return []Listener{ln}
}

// Package accept is what every listener of a transport shares: the queue
// that Accept reads, the bound on handshakes in progress (in all and per
// source address), and a Close that stops them all.
package accept

import (
	"context"
	"net"
	"net/netip"
	"sync"

	"github.com/pqtunnel/pqtunnel/transport"
)

// Core is embedded by listeners; it implements Listener.Accept.
type Core struct {
	ch     chan transport.Session
	closed chan struct{}
	// Ctx ends when the listener closes; handshakes derive from it.
	Ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
	// WG counts the accept loop and handshakes; Shutdown waits for them.
	WG sync.WaitGroup

	max, perSource int
	slotMu         sync.Mutex
	inUse          int
	bySource       map[netip.Addr]int
}

// New returns a Core allowing maxHandshakes handshakes at once, and a
// quarter of them from any one source IP address, but at least two (or
// maxHandshakes if less): a dial side's default two connections start together.
func New(maxHandshakes int) *Core {
	l := &Core{
		ch:        make(chan transport.Session),
		closed:    make(chan struct{}),
		max:       maxHandshakes,
		perSource: max(min(2, maxHandshakes), maxHandshakes/4),
		bySource:  map[netip.Addr]int{},
	}
	l.Ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// sourceIP is the IP address of remote, when it has one; IPv4-mapped
// addresses count as their IPv4 address.
func sourceIP(remote net.Addr) (netip.Addr, bool) {
	switch a := remote.(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap(), true
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// Acquire takes a handshake slot for a peer at remote. It returns false
// when MaxHandshakes handshakes are in progress, or a quarter of them from
// remote's IP address: one source must not lock out the others. The slot
// is freed by the first call of release.
func (l *Core) Acquire(remote net.Addr) (release func(), ok bool) {
	ip, limited := sourceIP(remote)
	l.slotMu.Lock()
	defer l.slotMu.Unlock()
	if l.inUse >= l.max || limited && l.bySource[ip] >= l.perSource {
		return nil, false
	}
	l.inUse++
	if limited {
		l.bySource[ip]++
	}
	return sync.OnceFunc(func() {
		l.slotMu.Lock()
		defer l.slotMu.Unlock()
		l.inUse--
		if limited {
			if l.bySource[ip]--; l.bySource[ip] == 0 {
				delete(l.bySource, ip)
			}
		}
	}), true
}

// InUse is the number of handshake slots taken.
func (l *Core) InUse() int {
	l.slotMu.Lock()
	defer l.slotMu.Unlock()
	return l.inUse
}

// Max is the number of handshake slots.
func (l *Core) Max() int { return l.max }

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

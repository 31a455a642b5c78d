package proxy

import (
	"net"
	"net/netip"
	"sync"
)

// quota counts what each key (a client address, a peer) holds at once, so
// that one key cannot take every slot of a shared limit. Keys holding
// nothing are forgotten, so the map is bounded by what is held.
type quota[K comparable] struct {
	mu   sync.Mutex
	held map[K]int
}

// take reserves one unit for key unless it holds limit already; a limit
// of zero or less is no bound.
func (q *quota[K]) take(key K, limit int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.held == nil {
		q.held = map[K]int{}
	}
	if limit > 0 && q.held[key] >= limit {
		return false
	}
	q.held[key]++
	return true
}

// give returns a unit take reserved.
func (q *quota[K]) give(key K) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.held[key]--; q.held[key] <= 0 {
		delete(q.held, key)
	}
}

// count is what key holds now.
func (q *quota[K]) count(key K) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.held[key]
}

// clientKey is the source a client counts against for MaxClientsPerIP: its
// IPv4 address, or the /64 of its IPv6 address, since one IPv6 host is
// routinely given a whole /64 to pick addresses from.
func clientKey(a net.Addr) netip.Prefix {
	var ip netip.Addr
	if ta, ok := a.(*net.TCPAddr); ok {
		ip = ta.AddrPort().Addr().Unmap()
	}
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.WithZone("").Prefix(bits)
	if err != nil {
		return netip.Prefix{} // not an IP address: all such share one key
	}
	return p
}

// share is part percent of total, at least one; total of zero or less (no
// bound) stays so.
func share(total, percent int) int {
	if total <= 0 {
		return total
	}
	return max(1, total*percent/100)
}

package proxy

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/defaults"
	"github.com/pqtunnel/pqtunnel/transport"
)

// The dial pool is the set of tunnel connections a dial side keeps.
// Connections base connections are spread over every address the Tunnel
// entries resolve to, at least one per address, so that in reverse mode
// every relay behind one name (a Kubernetes headless Service) reaches the
// origin; the names are looked up again every ResolveInterval. While every
// connection nears its stream bound in either direction, the pool opens one
// more, up to MaxConnections, as HTTP/2 clients do at
// MAX_CONCURRENT_STREAMS, and closes an extra one once it has carried
// nothing for SurplusIdle.

// dialTarget is one address to dial and the Tunnel entry it came from,
// whose host the TLS handshake verifies.
type dialTarget struct {
	entry string // as configured: host:port
	addr  string // ip:port, or entry itself while it does not resolve
}

// dialSlot is one tunnel connection the pool keeps up (routineMaintain).
type dialSlot struct {
	target dialTarget
	// extra is true for a connection opened for load beyond Connections.
	extra  bool
	cancel context.CancelCauseFunc
	// tunnel is the slot's admitted tunnel; nil while it dials.
	tunnel atomic.Pointer[tunnel]
	// idleSince is when the slot's tunnel was first seen carrying nothing,
	// zero while it carries streams; only routineDialPool uses it.
	idleSince time.Time
}

// retirement is the cause a slot's context is cancelled with when the pool
// drops it: its tunnel leaves the pool and is closed once drained.
type retirement struct{ reason string }

func (r *retirement) Error() string { return "tunnel connection retired: " + r.reason }

// dialPool is what the client path shares with routineDialPool.
type dialPool struct {
	// kick asks routineDialPool to look at the load now.
	kick chan struct{}
	// exhausted is set while the pool holds every connection it may and
	// none is dialling: a client that finds them all full is refused at
	// once rather than waiting for another.
	exhausted atomic.Bool
}

// lookupTimeout bounds the lookup of one Tunnel entry.
const lookupTimeout = 5 * time.Second

// kickPool asks the dial pool to look at the load, without waiting.
func (e *Engine) kickPool() {
	select {
	case e.pool.kick <- struct{}{}:
	default: // a look is due already
	}
}

// streamHeadroom is how many free stream slots, summed over the pool, make
// a dial side open another connection before they run out: a quarter of a
// connection's bound, so that the handshake completes before clients wait.
func streamHeadroom(bound int) int { return max(1, bound/4) }

// outBound is how many streams of this side's the peer accepts at once on
// t: bound.Outgoing(), which assumes the peer's settings are this side's,
// until the peer refused one at fewer. Zero is unbounded.
func (t *tunnel) outBound() int {
	b := t.bound.Outgoing()
	if r := int(t.refusedAt.Load()); r > 0 && (b <= 0 || r < b) {
		b = r
	}
	return b
}

// peerRefused records that the peer refused a stream of this side's on t
// while n of them (that one included) were open: it takes no more than
// n-1 from now on. It returns the bound t keeps, zero for none. A refusal
// with no other stream open says nothing of a bound, which is at least
// one: it was a full accept queue, or an older peer's own reset.
func (t *tunnel) peerRefused(n int64) int64 {
	n--
	if n < 1 {
		return t.refusedAt.Load()
	}
	for {
		old := t.refusedAt.Load()
		if old > 0 && old <= n {
			return old
		}
		if t.refusedAt.CompareAndSwap(old, n) {
			return n
		}
	}
}

// takeOpened counts a stream this side opens on t, unless t carries its
// stream bound of them already.
func (t *tunnel) takeOpened() bool {
	if n, b := t.opened.Add(1), t.outBound(); b > 0 && n > int64(b) {
		t.opened.Add(-1)
		return false
	}
	t.active.Add(1)
	return true
}

// releaseOpened undoes takeOpened once the stream has ended.
func (t *tunnel) releaseOpened() {
	t.active.Add(-1)
	t.opened.Add(-1)
}

// full reports whether t carries as many streams this side opened as its
// peer accepts on one connection.
func (t *tunnel) full() bool {
	b := t.outBound()
	return b > 0 && t.opened.Load() >= int64(b)
}

// accepted is the number of streams the peer opened on t that are open now.
func (t *tunnel) accepted() int64 { return max(0, t.active.Load()-t.opened.Load()) }

// noteLoad asks a dial side's pool for another connection when t nears its
// stream bound in either direction.
func (e *Engine) noteLoad(t *tunnel) {
	in, out := int64(t.bound.Streams), int64(t.outBound())
	if e.cfg.Mode != ModeDial || in <= 0 {
		return
	}
	if t.opened.Load() >= out-int64(streamHeadroom(int(out))) || t.accepted() >= in-int64(streamHeadroom(int(in))) {
		e.kickPool()
	}
}

// streamsFull says that every live tunnel of a route's peers carries its
// stream bound of streams this side opened.
type streamsFull struct {
	tunnels int
	bound   transport.StreamBound
	// learned is set when bound is what the peer refused a stream at,
	// lower than this side's own.
	learned bool
}

// fullFor counts the live tunnels of peers r allows that are full.
func (ts *tunnelSet) fullFor(r Route) streamsFull {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var f streamsFull
	for _, t := range ts.list {
		select {
		case <-t.s.Done():
			continue
		default:
		}
		if r.allows(t.peer) && t.full() {
			f.tunnels++
			f.bound = transport.StreamBound{Streams: t.bound.Outgoing(), ByMemory: t.bound.ByMemory}
			if b := t.outBound(); b != f.bound.Streams {
				f.bound, f.learned = transport.StreamBound{Streams: b}, true
			}
		}
	}
	return f
}

// pickOpened returns a tunnel for a client of r with a stream counted on it
// (release with releaseOpened). With none up it returns nil, nil; with every
// one full it waits up to HandshakeTimeout for a freed stream or a new
// connection, which the dial side opens as they fill (a listen side cannot
// tell whether its peer may still open one), and then returns nil and what
// is full; a dial side that holds MaxConnections returns at once. waited
// says whether it waited.
func (e *Engine) pickOpened(r Route) (t *tunnel, full *streamsFull, waited bool) {
	var deadline time.Time
	for {
		changed := e.tunnels.changedChan()
		if t := e.tunnels.pick(r); t != nil {
			if t.takeOpened() {
				e.noteLoad(t)
				return t, nil, waited
			}
			continue // another client took its last slot: pick again
		}
		f := e.tunnels.fullFor(r)
		if f.tunnels == 0 {
			return nil, nil, false
		}
		e.kickPool()
		if e.cfg.Mode == ModeDial && e.pool.exhausted.Load() {
			return nil, &f, false
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(orDefault(e.cfg.Mux.HandshakeTimeout, defaults.HandshakeTimeout))
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, &f, true
		}
		waited = true
		// A stream that ends frees a slot without a change to the pool.
		timer := time.NewTimer(min(left, 50*time.Millisecond))
		select {
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// refuseFull logs a client refused because every tunnel connection it may
// use carries its stream bound, naming the bound and its variable.
func (e *Engine) refuseFull(log *slog.Logger, f *streamsFull, waited bool) {
	variable := e.name("MaxStreams")
	if f.bound.ByMemory {
		variable = e.name("MaxConnMemory")
	}
	if f.learned {
		variable = "the peer's stream bound (its " + e.name("MaxStreams") + " or " + e.name("MaxConnMemory") + ")"
	}
	attrs := []any{"limit", f.bound.Streams, "tunnels", f.tunnels}
	var reason string
	switch {
	case e.cfg.Mode != ModeDial:
		reason = variable + " reached on every tunnel connection of the allowed peers"
		attrs = append(attrs, "hint", "a dial side opens more tunnel connections as they fill, up to its "+e.name("MaxConnections"))
	case waited:
		reason = variable + " reached on every tunnel connection, and no new one came up in time"
	default:
		reason = variable + " reached on every tunnel connection, and " + e.name("MaxConnections") + " of them are open"
		attrs = append(attrs, "max_connections", e.maxDialTunnels())
	}
	e.warnRefusal(log, "client refused", reason, attrs...)
}

// maxDialTunnels is how many tunnel connections a dial side may hold,
// extra ones included: MaxConnections. The base connections are kept even
// when they are more; then none is added.
func (e *Engine) maxDialTunnels() int {
	if e.cfg.MaxConnections < 0 {
		return math.MaxInt
	}
	return e.cfg.MaxConnections
}

// lookupTunnel resolves a Tunnel entry into the addresses to dial: every
// IPv4 address of its host, or every IPv6 one when it has none (a host
// with both is one machine reached two ways, not two relays), sorted so
// that the order a DNS server returns them in changes nothing.
func (e *Engine) lookupTunnel(ctx context.Context, entry string) ([]dialTarget, bool, error) {
	host, port, err := net.SplitHostPort(entry)
	if err != nil {
		return nil, false, err
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return []dialTarget{{entry: entry, addr: entry}}, false, nil
	}
	lookup := e.cfg.LookupHost
	if lookup == nil {
		lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	ips, err := lookup(ctx, host)
	if err != nil {
		return nil, true, err
	}
	var v4, v6 []netip.Addr
	for _, ip := range ips {
		if ip = ip.Unmap(); ip.Is4() {
			v4 = append(v4, ip)
		} else {
			v6 = append(v6, ip)
		}
	}
	if len(v4) == 0 {
		v4 = v6
	}
	slices.SortFunc(v4, netip.Addr.Compare)
	v4 = slices.Compact(v4)
	out := make([]dialTarget, len(v4))
	for i, ip := range v4 {
		out[i] = dialTarget{entry: entry, addr: net.JoinHostPort(ip.String(), port)}
	}
	if len(out) == 0 {
		return nil, true, errNoAddress
	}
	return out, true, nil
}

// errNoAddress is a lookup that succeeded with no usable address.
var errNoAddress = errors.New("the name has no address")

// poolState is the dial pool as routineDialPool owns it.
type poolState struct {
	e   *Engine
	ctx context.Context
	// resolved are the addresses of each Tunnel entry as last looked up.
	resolved map[string][]dialTarget
	targets  []dialTarget
	slots    []*dialSlot
	// looking holds the entries whose lookup is under way; looked brings
	// their answers.
	looking map[string]bool
	looked  chan lookupAnswer
}

// lookupAnswer is what the lookup of one Tunnel entry found.
type lookupAnswer struct {
	entry  string
	addrs  []dialTarget
	isName bool
	err    error
}

// routineDialPool keeps the dial side's tunnel connections: it resolves
// the Tunnel entries, starts and retires slots as addresses come and go,
// and grows and shrinks the pool with the load, until ctx ends. Lookups
// run beside it, one per entry at a time, so that a slow name server
// (up to lookupTimeout per name) holds up neither the other names nor
// the pool's growing and shrinking.
func (e *Engine) routineDialPool(ctx context.Context) {
	defer e.loops.Done()
	p := &poolState{e: e, ctx: ctx, resolved: map[string][]dialTarget{}, looking: map[string]bool{}, looked: make(chan lookupAnswer)}
	p.lookUp()
	resolveTick := time.NewTicker(orDefault(e.cfg.ResolveInterval, defaults.ResolveInterval))
	defer resolveTick.Stop()
	loadTick := time.NewTicker(time.Second)
	defer loadTick.Stop()
	for {
		select {
		case <-ctx.Done():
			return // the slots' contexts and the lookups end with ctx
		case <-resolveTick.C:
			p.lookUp()
		case a := <-p.looked:
			delete(p.looking, a.entry)
			if p.apply(a) {
				p.rebalance()
			}
		case <-e.pool.kick:
		case <-loadTick.C:
			p.shrink(time.Now())
		}
		p.grow()
	}
}

// lookUp starts a lookup of every Tunnel entry that has none under way.
func (p *poolState) lookUp() {
	e := p.e
	for _, entry := range e.cfg.Tunnel {
		if p.looking[entry] {
			continue
		}
		p.looking[entry] = true
		e.loops.Add(1)
		go func() {
			defer e.loops.Done()
			addrs, isName, err := e.lookupTunnel(p.ctx, entry)
			select {
			case p.looked <- lookupAnswer{entry: entry, addrs: addrs, isName: isName, err: err}:
			case <-p.ctx.Done():
			}
		}()
	}
}

// apply takes in the answer of one entry's lookup and reports whether its
// address set changed. An entry that does not resolve keeps its previous
// addresses, or is dialled by its name until it first resolves, so that
// the transport's own lookup reports why it fails.
func (p *poolState) apply(a lookupAnswer) bool {
	e := p.e
	changed := false
	old, known := p.resolved[a.entry]
	switch {
	case a.err != nil && p.ctx.Err() != nil:
		return false
	case a.err != nil && known:
		e.log.Warn("tunnel name lookup failed: keeping its addresses", "name", a.entry, "addrs", addrsOf(old), "err", a.err)
	case a.err != nil:
		e.log.Warn("tunnel name lookup failed: dialling the name itself", "name", a.entry, "err", a.err)
		p.resolved[a.entry] = []dialTarget{{entry: a.entry, addr: a.entry}}
		changed = true
	case !known:
		if a.isName {
			e.log.Info("tunnel name resolved", "name", a.entry, "addrs", addrsOf(a.addrs))
		}
		p.resolved[a.entry] = a.addrs
		changed = true
	case !slices.Equal(old, a.addrs):
		added, removed := diffTargets(old, a.addrs)
		e.log.Info("tunnel addresses changed", "name", a.entry, "addrs", addrsOf(a.addrs), "added", added, "removed", removed)
		e.obs.TunnelAddressesChanged(len(added), len(removed))
		p.resolved[a.entry] = a.addrs
		changed = true
	}
	// The targets in the order of the entries; two entries may name one
	// address: it is one relay.
	p.targets = nil
	for _, entry := range e.cfg.Tunnel {
		for _, t := range p.resolved[entry] {
			if !slices.ContainsFunc(p.targets, func(x dialTarget) bool { return x.addr == t.addr }) {
				p.targets = append(p.targets, t)
			}
		}
	}
	return changed
}

func addrsOf(ts []dialTarget) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.addr
	}
	return out
}

// diffTargets lists the addresses of b not in a, and of a not in b.
func diffTargets(a, b []dialTarget) (added, removed []string) {
	for _, t := range b {
		if !slices.Contains(a, t) {
			added = append(added, t.addr)
		}
	}
	for _, t := range a {
		if !slices.Contains(b, t) {
			removed = append(removed, t.addr)
		}
	}
	return added, removed
}

// rebalance spreads max(Connections, addresses) base slots round-robin over
// the targets, starting slots that are missing and retiring those of
// addresses that vanished (with their extra slots) or that an address
// holds beyond its share now.
func (p *poolState) rebalance() {
	e := p.e
	n := len(p.targets)
	if n == 0 {
		return
	}
	total := max(e.cfg.Connections, n)
	want := map[dialTarget]int{}
	for i := range total {
		want[p.targets[i%n]]++
	}
	have := map[dialTarget]int{}
	keep := p.slots[:0]
	for _, s := range p.slots {
		w, listed := want[s.target]
		switch {
		case !listed:
			p.retire(s, closeAddressGone)
		case s.extra:
			keep = append(keep, s)
		case have[s.target] >= w:
			p.retire(s, closeSurplus)
		default:
			have[s.target]++
			keep = append(keep, s)
		}
	}
	clear(p.slots[len(keep):])
	p.slots = keep
	for i := range total {
		if t := p.targets[i%n]; have[t] < want[t] {
			have[t]++
			p.start(t, false)
		}
	}
}

// start adds a slot that keeps a tunnel connection to t up.
func (p *poolState) start(t dialTarget, extra bool) {
	ctx, cancel := context.WithCancelCause(p.ctx)
	s := &dialSlot{target: t, extra: extra, cancel: cancel}
	p.slots = append(p.slots, s)
	p.e.loops.Add(1)
	go p.e.routineMaintain(ctx, s)
}

// retire stops s: its tunnel, if up, leaves the pool and closes once its
// streams are done (at most DrainTimeout), logged with reason.
func (p *poolState) retire(s *dialSlot, reason string) {
	s.cancel(&retirement{reason: reason})
}

// poolLoad sums the free stream slots of the pool's live connections.
type poolLoad struct {
	live, dialling, extraDialling int
	// roomOut and roomIn are the streams this side and the peer may still
	// open; bound the smallest stream bound, zero while some connection
	// has none, when the pool never grows.
	roomOut, roomIn, bound int
}

func (p *poolState) load() poolLoad {
	var l poolLoad
	unbounded := false
	for _, s := range p.slots {
		t := s.tunnel.Load()
		if t == nil || t.gone() {
			l.dialling++
			if s.extra {
				l.extraDialling++
			}
			continue
		}
		l.live++
		b, out := t.bound.Streams, t.outBound()
		if b <= 0 {
			unbounded = true
			continue
		}
		l.roomOut += max(0, out-int(t.opened.Load()))
		l.roomIn += max(0, b-int(t.accepted()))
		if l.bound == 0 || out < l.bound {
			l.bound = out
		}
	}
	if unbounded {
		l.bound = 0
	}
	return l
}

// low reports whether the pool's free stream slots, in either direction,
// are fewer than the headroom kept for clients arriving during a handshake.
func (l poolLoad) low() bool {
	return l.live > 0 && l.bound > 0 && min(l.roomOut, l.roomIn) < streamHeadroom(l.bound)
}

// grow opens one extra connection when the pool is nearly full, no extra
// one is dialling already, and MaxConnections allows, and tells clients
// whether waiting for one can help.
func (p *poolState) grow() {
	e := p.e
	l := p.load()
	if l.low() && l.extraDialling == 0 && len(p.slots) < e.maxDialTunnels() && len(p.targets) > 0 {
		t := p.leastUsedTarget()
		e.log.Info("tunnel connections near their stream bound: opening another", "peer", t.addr,
			"tunnels", len(p.slots), "max_connections", e.maxDialTunnels(), "limit", l.bound,
			"free_out", l.roomOut, "free_in", l.roomIn)
		p.start(t, true)
		e.obs.ExtraTunnelOpened()
		l.dialling++
	}
	e.pool.exhausted.Store(len(p.slots) >= e.maxDialTunnels() && l.dialling == 0)
}

// leastUsedTarget is the target with the fewest slots, the first of them
// in resolution order.
func (p *poolState) leastUsedTarget() dialTarget {
	count := map[dialTarget]int{}
	for _, s := range p.slots {
		count[s.target]++
	}
	return slices.MinFunc(p.targets, func(a, b dialTarget) int { return cmp.Compare(count[a], count[b]) })
}

// shrink retires extra slots that are not needed: one whose tunnel has
// carried nothing for SurplusIdle when the rest keep the headroom free,
// and one still dialling once the load no longer calls for it.
func (p *poolState) shrink(now time.Time) {
	e := p.e
	idleFor := orDefault(e.cfg.SurplusIdle, defaults.SurplusIdle)
	l := p.load()
	keep := p.slots[:0]
	for _, s := range p.slots {
		if !s.extra {
			keep = append(keep, s)
			continue
		}
		t := s.tunnel.Load()
		switch {
		case t == nil:
			if !l.low() {
				p.retire(s, closeSurplus)
				continue
			}
		case t.active.Load() > 0:
			s.idleSince = time.Time{}
		case s.idleSince.IsZero():
			s.idleSince = now
		case now.Sub(s.idleSince) >= idleFor:
			rest := poolLoad{live: l.live - 1, roomOut: l.roomOut - t.outBound(), roomIn: l.roomIn - t.bound.Streams, bound: l.bound}
			if !rest.low() {
				t.log.Info("closing an idle extra tunnel connection", "idle", now.Sub(s.idleSince).Round(time.Second), "tunnels", len(p.slots)-1)
				p.retire(s, closeSurplus)
				l = rest
				continue
			}
		}
		keep = append(keep, s)
	}
	clear(p.slots[len(keep):])
	p.slots = keep
}

// gone reports whether t's session has ended.
func (t *tunnel) gone() bool {
	select {
	case <-t.s.Done():
		return true
	default:
		return false
	}
}

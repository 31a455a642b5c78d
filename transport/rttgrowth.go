package transport

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// RTTGrewChecks is how many quiet checks in a row must find a path's RTT
// grown (rttGrew) before a dial side replaces the connection: 1.5 s at the
// default probe interval. A quiet connection's RTT is the path's, not its
// own traffic's, and the successor must come up over the grown RTT too, so
// a burst of other traffic's queueing costs at most a handshake; each
// further check is time in which a new stream rides the old connection. At
// 80 ms, an upload begun 2-4 s after the RTT grew moved 0.06-0.8x direct
// TCP with four checks, and 1.3x with two.
const RTTGrewChecks = 2

// rttGrew reports whether a smoothed RTT of now is well past was, the RTT
// a connection came up over: twice it and 20 ms more, which queueing in
// the socket buffers of a short path does not reach, and a path that grew
// from a LAN to a WAN, or from 20 ms to 80, does.
func rttGrew(was, now time.Duration) bool { return now >= 2*was+20*time.Millisecond }

// RTTGrowth replaces a session this side dialled once the path's RTT grew
// well past the one it came up over: the connection's windows, and its
// congestion control's idea of the path, were sized for that RTT and
// follow the new one slowly (the kernel's BBR, and quic-go's slow start,
// keep the shortest RTT they saw), while a new connection measures the
// path as it is. Without a redial it only tells its caller that the RTT
// grew: a listen side's, which cannot dial, but can still move its socket
// off a congestion control that keeps the old RTT. The zero value does
// nothing.
type RTTGrowth struct {
	// was is the RTT the session came up over, or the least it measured
	// since, if lower (Check's caller only); redial, if set, dials its
	// successor, whose Succession is sent on next.
	was    time.Duration
	redial func(context.Context) (Session, error)
	// measure is the RTT a new session came up over.
	measure func(Session) time.Duration
	next    chan Succession
	name    string // the transport's
	log     *slog.Logger

	grown     int // quiet checks in a row that found the RTT grown; one caller
	seen      int // checks in a row, quiet or busy, that found it grown
	replacing atomic.Bool
}

// NewRTTGrowth watches a session of transport name that came up over was,
// whose successor redial dials and measure tells the RTT of; with redial
// nil it dials nothing and offers nothing.
func NewRTTGrowth(name string, was time.Duration, redial func(context.Context) (Session, error), measure func(Session) time.Duration, log *slog.Logger) *RTTGrowth {
	return &RTTGrowth{was: was, redial: redial, measure: measure, next: make(chan Succession, 1), name: name, log: log}
}

// Superseded is the channel the successor is offered on, at most once (see
// the package's Superseded); nil for the zero value and without a redial.
func (g *RTTGrowth) Superseded() <-chan Succession {
	if g.redial == nil {
		return nil
	}
	return g.next
}

// Check takes one check's smoothed RTT, now; least, the lowest RTT the
// connection has measured (zero: not known), which lowers the RTT it is
// taken to have come up over when its handshake's was inflated (a busy
// machine's scheduling, under which QUIC, measured in the process, can
// read 10-30 ms on a path of 1, enough to hide an 80 ms path's growth);
// and whether the connection was busy since the last check (had more than
// a few packets in flight, or sent more than keep-alives): a busy check
// neither counts nor starts the count over. Each time RTTGrewChecks more
// quiet checks in a row found it grown, it dials a successor on wg, a dial
// that ends when done closes, and offers it if the successor came up over
// a grown RTT too: an RTT that a busy machine's scheduling inflated seldom
// holds for a handshake as well. One not offered lets later checks try
// again. Check is called from one goroutine.
//
// It returns how many checks in a row, this one included, found the RTT
// grown, busy or not (zero: this one did not): a path that grew, or a
// queue that the connection's own traffic has kept full for that long,
// which is for the caller to weigh.
func (g *RTTGrowth) Check(now, least time.Duration, busy bool, done <-chan struct{}, wg *sync.WaitGroup) (seen int) {
	if least > 0 && least < g.was {
		g.was = least
	}
	if g.next == nil || !rttGrew(g.was, now) {
		g.grown, g.seen = 0, 0
		return 0
	}
	g.seen++
	if busy || g.redial == nil {
		// Busy: the connection's own traffic fills the path's queue, and
		// the RTT with it, so this check says nothing of the path; and
		// without a redial there is nothing to dial.
		return g.seen
	}
	g.grown++
	if g.grown%RTTGrewChecks == 0 && g.replacing.CompareAndSwap(false, true) {
		wg.Add(1)
		go func(was time.Duration) {
			defer wg.Done()
			g.replace(now, was, done)
		}(g.was)
	}
	return g.seen
}

func (g *RTTGrowth) replace(now, was time.Duration, done <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // the dial ends with the session
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	attrs := []any{"rtt", now.Round(100 * time.Microsecond), "was", was.Round(100 * time.Microsecond)}
	ns, err := g.redial(ctx)
	if err != nil {
		g.log.Debug("tunnel path's RTT grew, and no new connection came up: keeping this one", append(attrs, "transport", g.name, "err", err)...)
		g.replacing.Store(false)
		return
	}
	if ctx.Err() != nil {
		_ = ns.Close() // the session went away meanwhile
		return
	}
	if up := g.measure(ns); !rttGrew(was, up) {
		_ = ns.Close() // not taken: the path is what it was
		g.log.Debug("tunnel path's RTT grew, but a new connection came up over the old one: keeping this one",
			append(attrs, "transport", g.name, "new", up.Round(100*time.Microsecond))...)
		g.replacing.Store(false)
		return
	}
	g.next <- Succession{Session: ns, Why: "tunnel path's RTT grew past the one its connection came up over: moving to a new connection",
		Attrs: attrs, Reason: MoveRTTGrew}
}

// Drop closes a successor offered that nobody took; the session calls it
// on Close, after the dial's wg is done.
func (g *RTTGrowth) Drop() {
	select {
	case n := <-g.next:
		_ = n.Session.Close() // offered too late: the session is going away
	default:
	}
}

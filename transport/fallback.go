package transport

import (
	"context"
	"net"
	"sync"
	"time"
)

// FallbackName is the Name of a Fallback transport: PQT_TRANSPORT=auto.
const FallbackName = "auto"

// Fallback returns the transport that pqtunnel calls auto. Listen serves
// primary and secondary on the same port number. Dial tries primary within
// Config.FallbackTimeout and, if that times out (UDP blocked), dials
// secondary, logging why. A session on primary is watched for loss (see
// the loss watch) and, once the path loses Config.FallbackLoss percent of
// its packets at random, offers a session on secondary through Superseded.
// A session carried by secondary tries primary again every
// Config.RetryPrimary, and once it connects and loses less than that of a
// burst of probes (with the watch off, once it connects), offers the new
// session through Superseded. A transport fallback never changes the TLS policy.
func Fallback(primary, secondary Transport) Transport {
	p, s := primary.Name(), secondary.Name()
	return &fallback{
		primary: primary, secondary: secondary,
		// Messages are fixed per pair; for auto they read as they always did.
		msgFellBack:    p + " handshake timed out, falling back to " + s,
		msgUnreachable: p + " port unreachable, falling back to " + s,
		msgStill:       p + " still unavailable, staying on " + s,
		msgBack:        p + " works again: moving tunnel back from " + s,
		msgLossy:       p + " loses packets at random, which holds its loss-based congestion control down: moving tunnel to " + s,
		msgLossyStay:   p + " loses packets at random, but " + s + " did not connect: staying on " + p,
		msgLossyPath:   p + " lost packets at random on this path: dialling " + s,
		msgStillLossy:  p + " still loses packets, staying on " + s,
	}
}

type fallback struct {
	primary, secondary                             Transport
	msgFellBack, msgUnreachable, msgStill, msgBack string
	msgLossy, msgLossyStay, msgStillLossy          string
	msgLossyPath                                   string
	// lossy holds, by peer address, the verdict of the session that found
	// the path lossy, until a trial of the primary finds it clean again:
	// the other tunnel connections to that address, idle ones too, follow
	// it, and new ones dial the secondary at once.
	lossyMu sync.Mutex
	lossy   map[string]lossVerdict
}

// lossyPath returns the verdict that found the path to addr lossy, if one did.
func (f *fallback) lossyPath(addr string) (lossVerdict, bool) {
	f.lossyMu.Lock()
	defer f.lossyMu.Unlock()
	v, ok := f.lossy[addr]
	return v, ok
}

// markLossy records v for addr, or, when clean, forgets addr.
func (f *fallback) markLossy(addr string, v lossVerdict, clean bool) {
	f.lossyMu.Lock()
	defer f.lossyMu.Unlock()
	if clean {
		delete(f.lossy, addr)
		return
	}
	if f.lossy == nil {
		f.lossy = map[string]lossVerdict{}
	}
	f.lossy[addr] = v
}

// Reasons a Succession gives, as a metric label.
const (
	// MoveLoss is a move off the primary transport for its loss.
	MoveLoss = "loss"
	// MoveBack is a move back to the primary transport once it works.
	MoveBack = "primary_works"
	// MoveRTTGrew is a move to a new connection on the same transport, since
	// the path's RTT grew well past the one the connection came up over.
	MoveRTTGrew = "rtt_grew"
)

func (f *fallback) Name() string { return FallbackName }

func (f *fallback) UsesUDP() bool { return UsesUDP(f.primary) || UsesUDP(f.secondary) }

// Listen binds primary first; when addr asks for any port, secondary binds
// the port number primary got, so a peer needs to know one address.
func (f *fallback) Listen(addr string, c *Config) (Listener, error) {
	if _, port, err := net.SplitHostPort(addr); err != nil || port != "0" {
		return f.listenOn(addr, addr, c)
	}
	// Port 0: the primary picks a free port and the secondary takes the same
	// number, which another process may hold on the secondary's protocol.
	// Then a fresh pair of ports is tried.
	var err error
	for range portAttempts {
		var l Listener
		if l, err = f.listenOn(addr, "", c); err == nil {
			return l, nil
		}
	}
	return nil, err
}

// portAttempts bounds how often Listen on port 0 looks for a port number
// free on both transports.
const portAttempts = 8

// listenOn binds the primary on addr and the secondary on second, or, when
// second is empty, on the port number the primary was given.
func (f *fallback) listenOn(addr, second string, c *Config) (Listener, error) {
	lp, err := f.primary.Listen(addr, c)
	if err != nil {
		return nil, err
	}
	if second == "" {
		host, _, _ := net.SplitHostPort(addr)
		_, p, _ := net.SplitHostPort(lp.Addr().String())
		second = net.JoinHostPort(host, p)
	}
	ls, err := f.secondary.Listen(second, c)
	if err != nil {
		_ = lp.Close() // the second listen error is what matters
		return nil, err
	}
	return newJointListener(lp, ls), nil
}

// Dial tries primary, then secondary if primary timed out or its port is
// unreachable.
func (f *fallback) Dial(ctx context.Context, addr string, c *Config) (Session, error) {
	c = c.WithDefaults()
	if v, lossy := f.lossyPath(addr); lossy && c.FallbackLoss > 0 {
		c.Logger.Info(f.msgLossyPath, append(v.attrs(), "peer", addr)...)
		s, err := f.secondary.Dial(ctx, addr, c)
		if err != nil {
			return nil, err
		}
		return f.retry(s, addr, c), nil
	}
	s, err := f.dialPrimary(ctx, addr, c)
	if err == nil {
		return f.watch(s, addr, c), nil
	}
	if ctx.Err() != nil {
		return nil, err
	}
	switch Classify(err) {
	case ReasonTimeout:
		c.Logger.Warn(f.msgFellBack, "peer", addr, "after", c.FallbackTimeout, "err", err)
	case ReasonPortUnreachable:
		c.Logger.Warn(f.msgUnreachable, "peer", addr, "err", err)
	default:
		return s, err
	}
	s, err = f.secondary.Dial(ctx, addr, c)
	if err != nil {
		return nil, err
	}
	return f.retry(s, addr, c), nil
}

// retry wraps s, a session on the secondary transport, so that it tries
// the primary again.
func (f *fallback) retry(s Session, addr string, c *Config) Session {
	fs := &fallbackSession{Session: s, next: make(chan Succession, 1), stop: make(chan struct{})}
	fs.wg.Add(1)
	go fs.routineRetry(f, addr, c)
	return fs
}

// watch wraps s, a session on the primary transport, so that its loss is
// watched, unless the watch is off.
func (f *fallback) watch(s Session, addr string, c *Config) Session {
	if c.FallbackLoss < 0 {
		return s
	}
	if _, ok := SessionStats(s); !ok {
		return s // nothing to watch
	}
	fs := &fallbackSession{Session: s, next: make(chan Succession, 1), stop: make(chan struct{})}
	fs.wg.Add(1)
	go fs.routineWatch(f, addr, c)
	return fs
}

// dialPrimary dials primary with the short FallbackTimeout.
func (f *fallback) dialPrimary(ctx context.Context, addr string, c *Config) (Session, error) {
	pc := *c
	pc.HandshakeTimeout = c.FallbackTimeout
	return f.primary.Dial(ctx, addr, &pc)
}

// Succession is a session offered to take another's place.
type Succession struct {
	Session Session
	// Why says, as a constant log message, why the move is made; Attrs are
	// its figures, as slog key-value pairs, without the peer.
	Why   string
	Attrs []any
	// Reason is why as a metric label: MoveLoss, MoveBack or MoveRTTGrew.
	Reason string
}

// Superseded returns the channel on which s offers, at most once, a session
// that should take its place, or nil if s is not the kind that does. Whoever
// receives the new session owns it; s should then be retired: no new
// streams, and closed once the streams it carries have finished.
func Superseded(s Session) <-chan Succession {
	if r, ok := s.(interface{ Superseded() <-chan Succession }); ok {
		return r.Superseded()
	}
	return nil
}

// fallbackSession is a session that looks for a better transport for as
// long as it is open: a secondary transport's looks for a way back to the
// primary one (routineRetry), a primary transport's watches its loss
// (routineWatch).
type fallbackSession struct {
	Session
	next     chan Succession // buffered: the retry loop never waits on it
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

func (s *fallbackSession) Unwrap() Session               { return s.Session }
func (s *fallbackSession) Superseded() <-chan Succession { return s.next }

// Close stops the retry or watch loop, closes an offered session nobody took, and
// closes the session.
func (s *fallbackSession) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	s.wg.Wait()
	select {
	case n := <-s.next:
		_ = n.Session.Close() // offered too late: s is going away
	default:
	}
	return s.Session.Close()
}

// lifetime returns a context that ends when s is closed or its session
// is gone; the dials and probes in progress end with it. stop ends the
// context's watcher and must be called.
func (s *fallbackSession) lifetime() (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-s.stop:
		case <-s.Session.Done():
		case <-done:
		}
		cancel()
	}()
	return ctx, func() { close(done) }
}

// passOn offers n, the successor that s's own session offered (a
// connection whose path's RTT grew), as wrapped: on the same footing as s.
func (s *fallbackSession) passOn(n Succession, wrapped Session) {
	n.Session = wrapped
	s.next <- n
}

func (s *fallbackSession) routineRetry(f *fallback, addr string, c *Config) {
	defer s.wg.Done()
	ctx, stop := s.lifetime()
	defer stop()
	tick := time.NewTicker(c.RetryPrimary)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-Superseded(s.Session):
			s.passOn(n, f.retry(n.Session, addr, c)) // it keeps looking for the primary
			return
		case <-tick.C:
		}
		ns, err := f.dialPrimary(ctx, addr, c)
		if ctx.Err() != nil {
			if err == nil {
				_ = ns.Close() // s went away meanwhile
			}
			return
		}
		if err != nil {
			c.Logger.Debug(f.msgStill, "peer", addr, "err", err)
			continue
		}
		// A primary that connects may still lose what loss-based
		// congestion control cannot carry: a burst of probes says.
		sent, answered, measured, err := probeLoss(ctx, ns)
		if err != nil || (measured && 100*lossOfProbes(sent, answered) >= c.FallbackLoss) {
			_ = ns.Close() // not taken: the secondary stays
			if ctx.Err() != nil {
				return
			}
			c.Logger.Debug(f.msgStillLossy, "peer", addr, "probes", sent, "answered", answered, "err", err)
			continue
		}
		var attrs []any
		if measured {
			attrs = []any{"probes", sent, "answered", answered}
		}
		f.markLossy(addr, lossVerdict{}, true)
		s.next <- Succession{Session: f.watch(ns, addr, c), Why: f.msgBack, Attrs: attrs, Reason: MoveBack}
		return
	}
}

// lossOfProbes is the share of a burst of probes that was not answered.
func lossOfProbes(sent, answered int) float64 {
	if sent == 0 {
		return 0
	}
	return 1 - float64(answered)/float64(sent)
}

// routineWatch samples the loss of s, a primary transport's session, and
// once the loss watch finds it lossy dials the secondary and offers it.
func (s *fallbackSession) routineWatch(f *fallback, addr string, c *Config) {
	defer s.wg.Done()
	ctx, stop := s.lifetime()
	defer stop()
	tick := time.NewTicker(lossSample)
	defer tick.Stop()
	w := newLossWatch(c.FallbackLoss / 100)
	var notBefore time.Time // a secondary that did not connect is not redialled before
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-Superseded(s.Session):
			s.passOn(n, f.watch(n.Session, addr, c)) // its loss is watched in turn
			return
		case <-tick.C:
		}
		st, _ := SessionStats(s.Session)
		v := w.observe(st)
		attrs := v.attrs()
		if !v.Lossy {
			// Another tunnel connection to addr found the path lossy.
			pv, lossy := f.lossyPath(addr)
			if !lossy {
				continue
			}
			attrs = append(pv.attrs(), "judged_by", "another tunnel connection to the peer")
		} else {
			f.markLossy(addr, v, false)
		}
		if time.Now().Before(notBefore) {
			continue
		}
		ns, err := f.secondary.Dial(ctx, addr, c)
		if ctx.Err() != nil {
			if err == nil {
				_ = ns.Close() // s went away meanwhile
			}
			return
		}
		if err != nil {
			c.Logger.Warn(f.msgLossyStay, append(attrs, "peer", addr, "err", err)...)
			notBefore = time.Now().Add(c.RetryPrimary)
			continue
		}
		s.next <- Succession{Session: f.retry(ns, addr, c), Why: f.msgLossy, Attrs: attrs, Reason: MoveLoss}
		return
	}
}

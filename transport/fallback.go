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
// secondary, logging why. A session so carried by secondary tries primary
// again every Config.RetryPrimary, and once it works offers the new session
// through Superseded. A transport fallback never changes the TLS policy.
func Fallback(primary, secondary Transport) Transport {
	p, s := primary.Name(), secondary.Name()
	return &fallback{
		primary: primary, secondary: secondary,
		// Messages are fixed per pair; for auto they read as they always did.
		msgFellBack:    p + " handshake timed out, falling back to " + s,
		msgUnreachable: p + " port unreachable, falling back to " + s,
		msgStill:       p + " still unavailable, staying on " + s,
		msgBack:        p + " works again: moving tunnel back from " + s,
	}
}

type fallback struct {
	primary, secondary                             Transport
	msgFellBack, msgUnreachable, msgStill, msgBack string
}

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
	s, err := f.dialPrimary(ctx, addr, c)
	if err == nil || ctx.Err() != nil {
		return s, err
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
	fs := &fallbackSession{Session: s, next: make(chan Succession, 1), stop: make(chan struct{})}
	fs.wg.Add(1)
	go fs.routineRetry(f, addr, c)
	return fs, nil
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
	// Why says, as a constant log message, why the move is made.
	Why string
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

// fallbackSession is a secondary transport's session that looks for a way
// back to the primary one for as long as it is open.
type fallbackSession struct {
	Session
	next     chan Succession // buffered: the retry loop never waits on it
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

func (s *fallbackSession) Unwrap() Session               { return s.Session }
func (s *fallbackSession) Superseded() <-chan Succession { return s.next }

// Close stops the retry loop, closes an offered session nobody took, and
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

func (s *fallbackSession) routineRetry(f *fallback, addr string, c *Config) {
	defer s.wg.Done()
	// The dial in progress ends with s.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	defer close(done)
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
	tick := time.NewTicker(c.RetryPrimary)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
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
		s.next <- Succession{Session: ns, Why: f.msgBack}
		return
	}
}

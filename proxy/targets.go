package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// A target's origin as readiness sees it.
const (
	// TargetUnknown: no dial yet.
	TargetUnknown = "unknown"
	// TargetUp: the last dial worked.
	TargetUp = "up"
	// TargetFailing: dials fail, for less than ReadyTargetDown so far.
	TargetFailing = "failing"
	// TargetDown: dials have failed for ReadyTargetDown or longer; the
	// side is not ready.
	TargetDown = "down"
)

// targetState classifies a target from its last dial and the start of its
// failures.
func targetState(last *DialResult, failingSince, now time.Time, downAfter time.Duration) string {
	switch {
	case last == nil:
		return TargetUnknown
	case failingSince.IsZero():
		return TargetUp
	case downAfter >= 0 && now.Sub(failingSince) >= downAfter:
		return TargetDown
	}
	return TargetFailing
}

// TargetStatus is one target route in /readyz.
type TargetStatus struct {
	Route string `json:"route"`
	Addr  string `json:"addr"`
	State string `json:"state"`
	// FailingSince is when its dials began to fail; nil while they work.
	FailingSince *time.Time `json:"failing_since,omitempty"`
	// Error is the last dial's error, when it failed.
	Error string `json:"error,omitempty"`
}

// targetStatuses describes every target route now.
func (e *Engine) targetStatuses() []TargetStatus {
	now := time.Now()
	out := []TargetStatus{}
	for _, r := range e.cfg.Target {
		rs := e.routeStats.status(KindTarget, r, e.tls.joined(r.Name), now, e.cfg.ReadyTargetDown)
		ts := TargetStatus{Route: rs.Name, Addr: rs.Addr, State: rs.State, FailingSince: rs.FailingSince}
		if rs.LastDial != nil && !rs.LastDial.OK {
			ts.Error = rs.LastDial.Error
		}
		out = append(out, ts)
	}
	return out
}

// targetHealth says in words how the named target's origin is doing, for
// the answer to a route query.
func (e *Engine) targetHealth(route string) string {
	for _, ts := range e.targetStatuses() {
		if ts.Route != route {
			continue
		}
		switch ts.State {
		case TargetUnknown:
			return "delivered here; its origin has not been dialled yet"
		case TargetUp:
			return "delivered here; its origin answers"
		default:
			return fmt.Sprintf("delivered here, but its origin %s has failed for %s: %s", ts.Addr, time.Since(*ts.FailingSince).Round(time.Second), ts.Error)
		}
	}
	return "delivered here"
}

// probeInterval is how often at most the readiness probe dials an idle
// target: often enough that a target is found down within about
// ReadyTargetDown of its failing, and never more often than every 100 ms.
func (e *Engine) probeInterval() time.Duration {
	return min(max(e.cfg.ReadyTargetDown/2, 100*time.Millisecond), 5*time.Second)
}

// kickProbe asks routineProbeTargets for a round of probes; a round
// already asked for covers this one too.
func (e *Engine) kickProbe() {
	select {
	case e.probeKick <- struct{}{}:
	default:
	}
}

// routineProbeTargets dials each target route's origin, when asked by a
// readiness query (kickProbe), unless a dial (a client's stream, or the
// last probe) is more recent than probeInterval, so that an idle side
// notices an origin that went away, and one that came back, before a
// client does. Probing only when readiness is asked means an origin sees
// no connection of pqtunnel's own unless something (a Kubernetes readiness
// probe, a load balancer) watches the side. It runs only when
// ReadyTargetDown is set.
func (e *Engine) routineProbeTargets(ctx context.Context) {
	defer e.loops.Done()
	interval := e.probeInterval()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.probeKick:
		}
		for _, r := range e.cfg.Target {
			s := e.routeStats.get(KindTarget, routeName(r.Name))
			s.mu.Lock()
			recent := s.last != nil && time.Since(s.last.Time) < interval
			s.mu.Unlock()
			if !recent {
				e.probeTarget(ctx, r, min(e.dialTimeout(), interval))
			}
		}
	}
}

// probeTarget dials r's origin and closes the connection at once. With
// PROXY protocol on it first sends the header's health-check form (v1
// UNKNOWN, v2 LOCAL), which an origin that expects a header accepts
// without a client address.
func (e *Engine) probeTarget(ctx context.Context, r Route, timeout time.Duration) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, r.network(), r.Addr)
	if ctx.Err() != nil && err != nil && time.Since(start) < timeout {
		return // shutting down: not the origin's fault
	}
	if err == nil {
		if e.cfg.ProxyProtocol != 0 {
			_ = writeProxyHeader(c, e.cfg.ProxyProtocol, netip.AddrPort{}, netip.AddrPort{}, "") // no client: the health-check form; a failed write says nothing the dial did not
		}
		_ = c.Close() // a probe only
	}
	e.routeStats.dialed(routeName(r.Name), start, err, true)
}

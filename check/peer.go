package check

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/transport"
)

// Plan says which probes CheckPeer runs.
type Plan struct {
	// Transports are probed in order; the first that connects also asks
	// the peer about the forward routes.
	Transports []transport.Transport
	// Configured is the transport the side runs with: one of Transports,
	// which must connect itself, or a transport.Fallback of them (auto),
	// which connects when any of them does.
	Configured transport.Transport
	// Classical, when the peer accepts none of the post-quantum groups in
	// strict mode, also asks whether it accepts classical X25519
	// (ProbeClassical).
	Classical bool
	// Watch, if set, is told of each probe as it runs.
	Watch Watcher
}

// Watcher is told of the probes CheckPeer runs, so that a caller can show
// them while the check goes on.
type Watcher interface {
	// Probing is called as a probe over tr offering groups starts
	// (classical for ProbeClassical's); the function it returns is called
	// with the outcome once the probe has ended.
	Probing(tr transport.Transport, groups []tls.CurveID, classical bool) (done func(Probe))
}

// PeerReport is what CheckPeer found out about one peer.
type PeerReport struct {
	// Works says, by transport name, whether the configured groups
	// connected over that transport.
	Works map[string]bool
	// Connects is whether the configured transport would connect.
	Connects bool
	// Routes are the peer's answers about the forward routes, from the
	// first transport that connected; Missing names the routes it lacks.
	Routes  []RouteAnswer
	Missing []string
	// Advice says, per transport, what would make it connect.
	Advice []string
}

// CheckPeer probes peer over each of plan's transports the way 'pqtunnel
// check' does: with the policy's groups together, then, unless the peer
// cannot be reached or the failure is about identities, each group alone;
// in strict mode, when the peer accepts none of them, the classical probe
// (plan.Classical) or the other hybrid groups, to say which it would
// accept. Each probe is bounded by cfg.Mux.HandshakeTimeout within ctx.
func CheckPeer(ctx context.Context, cfg Config, peer string, plan Plan) PeerReport {
	pol := cfg.TLS.Policy()
	mode, groups, ours := pol.Mode, pol.Groups, cfg.TLS.Authenticator()
	r := PeerReport{Works: map[string]bool{}}
	asked := false
	for _, tr := range plan.Transports {
		full := plan.probe(ctx, cfg, peer, tr, mode, groups, !asked)
		r.Works[tr.Name()] = full.Err == nil
		if full.Err == nil && !asked {
			r.Routes, asked = full.Routes, true
		}
		if full.Err != nil {
			r.Advice = append(r.Advice, fmt.Sprintf("%s: %s", tr.Name(), full.Verdict(ours)))
		}
		if d := full.Diagnosis(); full.Err != nil && (d.Unreachable() || d.AboutIdentity()) {
			continue // per-group probes would say the same
		}
		var accepted []string
		for _, g := range groups {
			if len(groups) == 1 {
				break
			}
			if p := plan.probe(ctx, cfg, peer, tr, mode, []tls.CurveID{g}, false); p.Err == nil {
				accepted = append(accepted, hybridtls.GroupName(g))
			}
		}
		if reason := transport.Classify(full.Err); full.Err != nil && mode == hybridtls.Strict && (reason == transport.ReasonNoCommonGroup || reason == transport.ReasonNotPostQuantum) {
			switch {
			case plan.Classical && plan.probeClassical(ctx, cfg, peer, tr).ClassicalAccepted():
				r.Advice = append(r.Advice, fmt.Sprintf("%s: the peer is not post-quantum: it accepts only classical X25519, so %s=strict will not connect; upgrade the peer", tr.Name(), cfg.name("PQ")))
			case len(accepted) == 0:
				a, found := plan.otherGroupsAdvice(ctx, cfg, peer, tr, groups)
				if !found && !plan.Classical {
					a += "; if it may be classical-only, 'pqtunnel check --probe-classical' asks it without sending anything of ours under a classical key exchange"
				}
				r.Advice = append(r.Advice, fmt.Sprintf("%s: %s", tr.Name(), a))
			}
		}
	}
	// A transport check probed must work itself; auto needs one of them.
	ok, probed := r.Works[plan.Configured.Name()]
	if !probed {
		for _, w := range r.Works {
			ok = ok || w
		}
	}
	r.Connects = ok
	for _, a := range r.Routes {
		if !a.Known && !a.NotCarried && a.Err == nil {
			r.Missing = append(r.Missing, a.Route)
		}
	}
	return r
}

// ClassicalAccepted reports whether a ProbeClassical found the peer
// accepting classical X25519.
func (p Probe) ClassicalAccepted() bool {
	return errors.Is(p.Err, ErrClassicalProbeStopped) && p.Group == tls.X25519
}

// probe runs one probe, asking about the forward routes too when askRoutes.
func (plan Plan) probe(ctx context.Context, cfg Config, peer string, tr transport.Transport, mode hybridtls.PQMode, groups []tls.CurveID, askRoutes bool) Probe {
	ctx, cancel := context.WithTimeout(ctx, cfg.Mux.HandshakeTimeout)
	defer cancel()
	done := plan.watch(tr, groups, false)
	var p Probe
	if askRoutes {
		p = ProbeRoutes(ctx, cfg, peer, tr, mode, groups)
	} else {
		p = ProbeTunnel(ctx, cfg, peer, tr, mode, groups)
	}
	done(p)
	return p
}

func (plan Plan) probeClassical(ctx context.Context, cfg Config, peer string, tr transport.Transport) Probe {
	ctx, cancel := context.WithTimeout(ctx, cfg.Mux.HandshakeTimeout)
	defer cancel()
	done := plan.watch(tr, []tls.CurveID{tls.X25519}, true)
	p := ProbeClassical(ctx, cfg, peer, tr)
	done(p)
	return p
}

func (plan Plan) watch(tr transport.Transport, groups []tls.CurveID, classical bool) func(Probe) {
	if plan.Watch == nil {
		return func(Probe) {}
	}
	return plan.Watch.Probing(tr, groups, classical)
}

// otherGroupsAdvice probes the hybrid groups missing from offered to tell
// the user which one the peer would accept, and reports whether it found one.
func (plan Plan) otherGroupsAdvice(ctx context.Context, cfg Config, peer string, tr transport.Transport, offered []tls.CurveID) (string, bool) {
	var theirs []tls.CurveID
	for _, g := range hybridtls.DefaultGroups {
		if slices.Contains(offered, g) {
			continue
		}
		if p := plan.probe(ctx, cfg, peer, tr, hybridtls.Strict, []tls.CurveID{g}, false); p.Err == nil {
			theirs = append(theirs, g)
		}
	}
	if len(theirs) == 0 {
		return fmt.Sprintf("the peer accepts none of %s, nor any other hybrid group: check its %s and %s", hybridtls.GroupNames(offered), cfg.name("Groups"), cfg.name("PQ")), false
	}
	return fmt.Sprintf("the peer accepts only %s; add it to %s", hybridtls.GroupNames(theirs), cfg.name("Groups")), true
}

// name is how messages name a setting: through SettingName, else by its
// Go name.
func (c Config) name(setting string) string {
	if c.SettingName != nil {
		return c.SettingName(setting)
	}
	return setting
}

package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/check"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/config"
	"github.com/pqtunnel/pqtunnel/proxy"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
)

// runCheck probes each configured peer over each transport, with the whole
// group list and each group alone, and says what would connect and why not.
// It fails unless the configured transport and policy would connect to every peer.
func runCheck(args []string, environ map[string]string, stdout, stderr io.Writer) error {
	fs := newFlags("check", "check [--probe-classical]", "probe the peers of a dial side's environment over each transport and group, and say what would connect and why not")
	probeClassical := fs.Bool("probe-classical", false, "when the peer accepts none of our post-quantum groups, ask whether it accepts classical X25519; the handshake is aborted once its certificate arrives, so nothing of ours is sent under a classical key exchange")
	if err := fs.parse(args, 0, stdout, stderr); err != nil {
		return err
	}
	c, err := config.Parse(environ)
	if err != nil {
		return err
	}
	if c.Engine.Mode != proxy.ModeDial {
		return fmt.Errorf("check: %s must be dial: check probes the peers in %s", config.Name("Mode"), config.Name("Tunnel"))
	}
	pc, err := engineConfig(c, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	transportVar, pqVar, groupsVar := config.Name("Transport"), config.Name("PQ"), config.Name("Groups")
	cc := checkConfig(pc)
	mode := pc.TLS.Policy().Mode
	groups := pc.TLS.Policy().Groups
	ours := pc.TLS.Material()
	failed := 0
	for _, peer := range pc.Tunnel {
		fmt.Fprintf(stdout, "peer %s  (%s=%s %s=%s %s=%s)\n", peer, transportVar, pc.Transport.Name(), pqVar, mode, groupsVar, hybridtls.GroupNames(groups))
		works := map[string]bool{}
		var advice []string
		var routes []check.RouteAnswer
		asked := false
		for _, tr := range basicTransports {
			// The first transport that connects also asks about the routes.
			full := probeWith(stdout, cc, peer, tr, mode, groups, ours, !asked)
			works[tr.Name()] = full.Err == nil
			if full.Err == nil && !asked {
				routes, asked = full.Routes, true
			}
			if full.Err != nil {
				advice = append(advice, fmt.Sprintf("%s: %s", tr.Name(), full.Verdict(ours)))
			}
			if d := full.Diagnosis(); full.Err != nil && (d.Unreachable() || d.AboutIdentity()) {
				continue // per-group probes would say the same
			}
			var accepted []string
			for _, g := range groups {
				if len(groups) == 1 {
					break
				}
				if p := probe(stdout, cc, peer, tr, mode, []tls.CurveID{g}, ours); p.Err == nil {
					accepted = append(accepted, hybridtls.GroupName(g))
				}
			}
			if r := transport.Classify(full.Err); full.Err != nil && mode == hybridtls.Strict && (r == transport.ReasonNoCommonGroup || r == transport.ReasonNotPostQuantum) {
				switch {
				case *probeClassical && probeClassicalGroup(stdout, cc, peer, tr):
					advice = append(advice, fmt.Sprintf("%s: the peer is not post-quantum: it accepts only classical X25519, so %s=strict will not connect; upgrade the peer", tr.Name(), pqVar))
				case len(accepted) == 0:
					a, found := otherGroupsAdvice(stdout, cc, peer, tr, groups, ours)
					if !found && !*probeClassical {
						a += "; if it may be classical-only, 'pqtunnel check --probe-classical' asks it without sending anything of ours under a classical key exchange"
					}
					advice = append(advice, fmt.Sprintf("%s: %s", tr.Name(), a))
				}
			}
		}
		// A transport check probed must work itself; auto needs one of them.
		ok, probed := works[pc.Transport.Name()]
		if !probed {
			for _, w := range works {
				ok = ok || w
			}
		}
		missing := printRoutes(stdout, routes)
		for _, a := range advice {
			fmt.Fprintln(stdout, "  advice:", a)
		}
		if ok {
			var each []string
			for _, tr := range basicTransports {
				each = append(each, fmt.Sprintf("%s: %s", tr.Name(), yesNo(works[tr.Name()])))
			}
			if len(missing) > 0 {
				failed++
				fmt.Fprintf(stdout, "  verdict: the tunnel would connect (%s), but the peer's %s lacks %s: clients on %s would be refused\n",
					strings.Join(each, ", "), config.Name("Target"), oneMany(len(missing), "route", "routes")+" "+strings.Join(missing, ", "), oneMany(len(missing), "it", "them"))
				continue
			}
			fmt.Fprintf(stdout, "  verdict: would connect (%s)\n", strings.Join(each, ", "))
		} else {
			failed++
			fmt.Fprintf(stdout, "  verdict: would NOT connect with %s=%s\n", transportVar, pc.Transport.Name())
		}
	}
	if failed > 0 {
		return fmt.Errorf("check: %d of %d peers would not connect or lack routes", failed, len(pc.Tunnel))
	}
	return nil
}

// checkConfig is what the probes take of the engine's configuration.
func checkConfig(pc proxy.Config) check.Config {
	cc := check.Config{TLS: pc.TLS, Mux: pc.Mux, SettingName: pc.SettingName}
	for _, r := range pc.Forward {
		cc.Forward = append(cc.Forward, check.Route{Name: r.Name, Allow: r.Allow})
	}
	return cc
}

// printRoutes prints the peer's answer about each forward route and
// returns the names of those it lacks.
func printRoutes(w io.Writer, routes []check.RouteAnswer) (missing []string) {
	forwardVar, targetVar := config.Name("Forward"), config.Name("Target")
	for _, a := range routes {
		switch {
		case a.NotCarried:
			fmt.Fprintf(w, "  route %-12s not carried to this peer: its @ list in %s does not name it\n", a.Route, forwardVar)
		case errors.Is(a.Err, check.ErrQueryUnsupported):
			fmt.Fprintf(w, "  route %-12s not checked: %v\n", a.Route, a.Err)
		case a.Err != nil:
			fmt.Fprintf(w, "  route %-12s not checked: %v\n", a.Route, a.Err)
		case a.Known:
			fmt.Fprintf(w, "  route %-12s ok: in the peer's %s (%s)\n", a.Route, targetVar, a.Message)
		default:
			missing = append(missing, a.Route)
			fmt.Fprintf(w, "  route %-12s MISSING: %s\n", a.Route, a.Message)
		}
	}
	return missing
}

// oneMany is one or many by n.
func oneMany(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// probeClassicalGroup reports whether peer accepts classical X25519 over
// tr, printing the probe's line; see check.ProbeClassical.
func probeClassicalGroup(w io.Writer, cc check.Config, peer string, tr transport.Transport) bool {
	ctx, cancel := context.WithTimeout(context.Background(), cc.Mux.HandshakeTimeout)
	defer cancel()
	p := check.ProbeClassical(ctx, cc, peer, tr)
	accepted := errors.Is(p.Err, check.ErrClassicalProbeStopped) && p.Group == tls.X25519
	verdict := "refused"
	if accepted {
		verdict = "accepted (stopped after its certificate; ours was not sent)"
	}
	fmt.Fprintf(w, "  %-4s offer %-52s %s\n", tr.Name(), "X25519 (classical, --probe-classical)", verdict)
	return accepted
}

func probe(w io.Writer, cc check.Config, peer string, tr transport.Transport, mode hybridtls.PQMode, groups []tls.CurveID, ours *hybridtls.Material) check.Probe {
	return probeWith(w, cc, peer, tr, mode, groups, ours, false)
}

// progressInterval is how often a probe that is still waiting says so.
const progressInterval = 2 * time.Second

// probeWith runs one probe, asking about the forward routes too when
// askRoutes, prints a line every progressInterval while it waits, and
// then its result.
func probeWith(w io.Writer, cc check.Config, peer string, tr transport.Transport, mode hybridtls.PQMode, groups []tls.CurveID, ours *hybridtls.Material, askRoutes bool) check.Probe {
	ctx, cancel := context.WithTimeout(context.Background(), cc.Mux.HandshakeTimeout)
	defer cancel()
	offered := hybridtls.GroupNames(groups)
	giveUp := cc.Mux.HandshakeTimeout
	if tr.Name() == quic.Name {
		giveUp = quic.SilenceTimeout(giveUp) // a peer that never answers
	}
	stop := progress(w, fmt.Sprintf("  %-4s offer %-52s", tr.Name(), offered), giveUp)
	var p check.Probe
	if askRoutes {
		p = check.ProbeRoutes(ctx, cc, peer, tr, mode, groups)
	} else {
		p = check.ProbeTunnel(ctx, cc, peer, tr, mode, groups)
	}
	stop()
	var sizes string
	if p.ClientHello > 0 {
		sizes = fmt.Sprintf(" ClientHello=%dB", p.ClientHello)
		if p.ServerHello > 0 {
			sizes += fmt.Sprintf(" ServerHello=%dB key_share=%#04x", p.ServerHello, uint16(p.WireGroup))
		}
	}
	if p.FirstFlight > 0 {
		sizes = fmt.Sprintf(" first_flight=%dB/%d packets", p.FirstFlight, p.FirstFlightPackets)
	}
	if p.Err != nil {
		fmt.Fprintf(w, "  %-4s offer %-52s FAIL%s  %s\n", tr.Name(), offered, sizes, p.Verdict(ours))
		return p
	}
	fmt.Fprintf(w, "  %-4s offer %-52s ok   group=%s sig=%s handshake=%s%s peer=%s pq_auth=%t\n", tr.Name(), offered,
		hybridtls.GroupName(p.Group), p.Sig, p.Handshake.Round(10*time.Microsecond), sizes, p.PeerName, p.PQAuth)
	return p
}

// progress prints prefix and how long it has waited every
// progressInterval until stop is called; stop waits for the printer.
func progress(w io.Writer, prefix string, timeout time.Duration) (stop func()) {
	start := time.Now()
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(progressInterval)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				fmt.Fprintf(w, "%s still waiting: no answer after %s (gives up after %s)\n", prefix, time.Since(start).Round(time.Second), timeout)
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// otherGroupsAdvice probes the hybrid groups missing from offeredGroups to
// tell the user which one the peer would accept, and reports whether it
// found one.
func otherGroupsAdvice(w io.Writer, cc check.Config, peer string, tr transport.Transport, offeredGroups []tls.CurveID, ours *hybridtls.Material) (string, bool) {
	var theirs []tls.CurveID
	for _, g := range hybridtls.DefaultGroups {
		if slices.Contains(offeredGroups, g) {
			continue
		}
		if p := probe(w, cc, peer, tr, hybridtls.Strict, []tls.CurveID{g}, ours); p.Err == nil {
			theirs = append(theirs, g)
		}
	}
	if len(theirs) == 0 {
		return fmt.Sprintf("the peer accepts none of %s, nor any other hybrid group: check its %s and %s", hybridtls.GroupNames(offeredGroups), config.Name("Groups"), config.Name("PQ")), false
	}
	return fmt.Sprintf("the peer accepts only %s; add it to %s", hybridtls.GroupNames(theirs), config.Name("Groups")), true
}

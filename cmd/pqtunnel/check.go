package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/auth"
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
	plan := check.Plan{Transports: basicTransports, Configured: pc.Transport, Classical: *probeClassical,
		Watch: probePrinter{w: stdout, timeout: cc.Mux.HandshakeTimeout, ours: pc.TLS.Authenticator()}}
	failed := 0
	for _, peer := range pc.Tunnel {
		fmt.Fprintf(stdout, "peer %s  (%s=%s %s=%s %s=%s)\n", peer, transportVar, pc.Transport.Name(), pqVar, mode, groupsVar, hybridtls.GroupNames(groups))
		r := check.CheckPeer(context.Background(), cc, peer, plan)
		printRoutes(stdout, r.Routes)
		for _, a := range r.Advice {
			fmt.Fprintln(stdout, "  advice:", a)
		}
		if r.Connects {
			var each []string
			for _, tr := range basicTransports {
				each = append(each, fmt.Sprintf("%s: %s", tr.Name(), yesNo(r.Works[tr.Name()])))
			}
			if len(r.Missing) > 0 {
				failed++
				fmt.Fprintf(stdout, "  verdict: the tunnel would connect (%s), but the peer's %s lacks %s: clients on %s would be refused\n",
					strings.Join(each, ", "), config.Name("Target"), oneMany(len(r.Missing), "route", "routes")+" "+strings.Join(r.Missing, ", "), oneMany(len(r.Missing), "it", "them"))
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

// printRoutes prints the peer's answer about each forward route.
func printRoutes(w io.Writer, routes []check.RouteAnswer) {
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
			fmt.Fprintf(w, "  route %-12s MISSING: %s\n", a.Route, a.Message)
		}
	}
}

// oneMany is one or many by n.
func oneMany(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// probePrinter prints each probe check.CheckPeer runs: a line every
// progressInterval while it waits, then its result.
type probePrinter struct {
	w       io.Writer
	timeout time.Duration
	// ours is this side's authenticator, whose advice a failed probe's verdict gives.
	ours auth.Authenticator
}

// progressInterval is how often a probe that is still waiting says so.
const progressInterval = 2 * time.Second

func (pp probePrinter) Probing(tr transport.Transport, groups []tls.CurveID, classical bool) func(check.Probe) {
	if classical {
		return func(p check.Probe) {
			verdict := "refused"
			if p.ClassicalAccepted() {
				verdict = "accepted (stopped after its certificate; ours was not sent)"
			}
			fmt.Fprintf(pp.w, "  %-4s offer %-52s %s\n", tr.Name(), "X25519 (classical, --probe-classical)", verdict)
		}
	}
	offered := hybridtls.GroupNames(groups)
	giveUp := pp.timeout
	if tr.Name() == quic.Name {
		giveUp = quic.SilenceTimeout(giveUp) // a peer that never answers
	}
	stop := progress(pp.w, fmt.Sprintf("  %-4s offer %-52s", tr.Name(), offered), giveUp)
	return func(p check.Probe) {
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
			fmt.Fprintf(pp.w, "  %-4s offer %-52s FAIL%s  %s\n", tr.Name(), offered, sizes, p.Verdict(pp.ours))
			return
		}
		fmt.Fprintf(pp.w, "  %-4s offer %-52s ok   group=%s sig=%s handshake=%s%s peer=%s pq_auth=%t\n", tr.Name(), offered,
			hybridtls.GroupName(p.Group), p.Sig, p.Handshake.Round(10*time.Microsecond), sizes, p.PeerName, p.PQAuth)
	}
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

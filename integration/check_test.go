package integration

import (
	"context"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

// This file tests 'pqtunnel check', run as the binary with a dial side's
// environment, against listen sides that would and would not connect.

// chkDialEnv is a dial side's environment for peer: the "dial" identity
// accepting the "listen" one, a PQT_FORWARD that check does not bind, and
// a short handshake timeout so that unanswered probes end soon.
func chkDialEnv(t *testing.T, peer, transport string, extra map[string]string) map[string]string {
	t.Helper()
	env := sideEnv("dial", transport, identityNamed(t, "dial"), identityNamed(t, "listen"), map[string]string{
		"PQT_HANDSHAKE_TIMEOUT": "2s",
	})
	env["PQT_TUNNEL"] = peer
	env["PQT_FORWARD"] = loopback(freePort(t))
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// chkRun runs 'pqtunnel check' with env and returns its stdout and stderr
// together and its exit code.
func chkRun(t *testing.T, ctx context.Context, env map[string]string, flags ...string) (string, int) {
	t.Helper()
	p := startProc(t, ctx, "pqtunnel check", env, pqtunnelBin, append([]string{"check"}, flags...)...)
	code := p.wait(t, within(t, ctx, 45*time.Second))
	return p.stdout.String() + p.stderr.String(), code
}

// chkLine matches a probe line of check's output: transport, the groups
// offered, and what follows.
func chkLine(transport, offered, rest string) *regexp.Regexp {
	return regexp.MustCompile(`(?m)^  ` + transport + ` +offer ` + regexp.QuoteMeta(offered) + ` +` + rest)
}

// TestCheck runs 'pqtunnel check' against a healthy peer, a peer without
// UDP, a classical-only peer, a peer that does not accept our pin and a
// peer whose pin we do not accept, and checks the exit code and advice.
func TestCheck(t *testing.T) {
	const all = "X25519MLKEM768,SecP256r1MLKEM768,SecP384r1MLKEM1024"
	ctx := testContext(t, 100*time.Second)

	t.Run("healthy", func(t *testing.T) {
		l := startListen(t, ctx, 0, "auto", map[string]string{"PQT_TARGET": loopback(freePort(t))})
		out, code := chkRun(t, ctx, chkDialEnv(t, l.tunnelAddr, "auto", nil))
		t.Logf("pqtunnel check (exit %d):\n%s", code, out)
		if code != 0 {
			t.Errorf("check exited %d against a healthy peer, want 0", code)
		}
		if !strings.Contains(out, "verdict: would connect (quic: yes, tcp: yes)") {
			t.Errorf("output lacks the verdict \"would connect (quic: yes, tcp: yes)\"")
		}
		listenPin := identityNamed(t, "listen").pin
		for _, tr := range []string{"quic", "tcp"} {
			if re := chkLine(tr, all, `ok +group=X25519MLKEM768 .*peer=`+listenPin+` pq_auth=true`); !re.MatchString(out) {
				t.Errorf("no %s probe line with the full list, group=X25519MLKEM768, the peer's pin and pq_auth=true", tr)
			}
		}
		if !chkLine("tcp", all, `ok .*key_share=0x11ec`).MatchString(out) {
			t.Errorf("the tcp probe does not report key_share=0x11ec read off the wire")
		}
		for _, g := range grpGroups {
			for _, tr := range []string{"quic", "tcp"} {
				if !chkLine(tr, g.name, `ok +group=`+g.name+` `).MatchString(out) {
					t.Errorf("no %s probe line for %s alone that succeeds with it", tr, g.name)
				}
			}
		}
		if strings.Contains(out, "advice:") {
			t.Errorf("advice given for a healthy peer")
		}
		if !regexp.MustCompile(`(?m)^  route default +ok: in the peer's PQT_TARGET`).MatchString(out) {
			t.Errorf("output does not say that the peer has the unnamed route")
		}
	})

	t.Run("route missing at the peer", func(t *testing.T) {
		l := startListen(t, ctx, 0, "auto", map[string]string{"PQT_TARGET": "redis=" + loopback(freePort(t))})
		env := chkDialEnv(t, l.tunnelAddr, "auto", nil)
		env["PQT_FORWARD"] = "redis=" + loopback(freePort(t)) + ",pg=" + loopback(freePort(t))
		out, code := chkRun(t, ctx, env)
		t.Logf("pqtunnel check (exit %d):\n%s", code, out)
		if code == 0 {
			t.Errorf("check exited 0 although the peer lacks route pg")
		}
		if !regexp.MustCompile(`(?m)^  route redis +ok: in the peer's PQT_TARGET`).MatchString(out) {
			t.Errorf("output does not say that the peer has route redis")
		}
		if !regexp.MustCompile(`(?m)^  route pg +MISSING: route "pg" is not in the peer's PQT_TARGET \(it has: redis\)`).MatchString(out) {
			t.Errorf("output does not say that route pg is missing, with the routes the peer has")
		}
		if !strings.Contains(out, "verdict: the tunnel would connect (quic: yes, tcp: yes), but the peer's PQT_TARGET lacks route pg") {
			t.Errorf("the verdict does not say that the peer lacks route pg")
		}
		if strings.Contains(out, "verdict: would connect") {
			t.Errorf("the verdict says \"would connect\" although a route is missing")
		}
		// The query dials nothing and is no stream: the listen side counts none.
		if n := len(l.logs(msgIs("stream refused"))); n != 0 {
			t.Errorf("the listen side logged %d refused streams for route queries", n)
		}
	})

	t.Run("no UDP", func(t *testing.T) {
		l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": loopback(freePort(t))})
		// Nothing listens on the UDP port: the ICMP port unreachable that
		// answers says so at once, well before the handshake timeout.
		start := time.Now()
		out, code := chkRun(t, ctx, chkDialEnv(t, l.tunnelAddr, "auto", map[string]string{"PQT_HANDSHAKE_TIMEOUT": "20s"}))
		took := time.Since(start)
		t.Logf("pqtunnel check, PQT_TRANSPORT=auto (exit %d, %s):\n%s", code, took.Round(time.Millisecond), out)
		if took > 10*time.Second {
			t.Errorf("check took %s against a closed UDP port; want a fast failure, not the 20s handshake timeout", took.Round(time.Millisecond))
		}
		if !chkLine("quic", all, `FAIL.*ICMP port unreachable`).MatchString(out) {
			t.Errorf("the quic probe does not name ICMP port unreachable")
		}
		if code != 0 {
			t.Errorf("check exited %d with PQT_TRANSPORT=auto against a TCP-only peer, want 0 (auto connects over tcp)", code)
		}
		if !strings.Contains(out, "verdict: would connect (quic: no, tcp: yes)") {
			t.Errorf("output lacks the verdict \"would connect (quic: no, tcp: yes)\"")
		}
		if !regexp.MustCompile(`(?m)^  advice: quic: .*UDP.*PQT_TRANSPORT=tcp`).MatchString(out) {
			t.Errorf("output lacks advice for quic that mentions UDP and PQT_TRANSPORT=tcp")
		}

		out, code = chkRun(t, ctx, chkDialEnv(t, l.tunnelAddr, "quic", nil))
		t.Logf("pqtunnel check, PQT_TRANSPORT=quic (exit %d):\n%s", code, out)
		if code == 0 {
			t.Errorf("check exited 0 with PQT_TRANSPORT=quic against a peer without UDP")
		}
		if !strings.Contains(out, "verdict: would NOT connect with PQT_TRANSPORT=quic") {
			t.Errorf("output lacks \"verdict: would NOT connect with PQT_TRANSPORT=quic\"")
		}
	})

	t.Run("UDP dropped", func(t *testing.T) {
		l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": loopback(freePort(t))})
		// A socket on the listen side's UDP port that reads and never
		// answers is a firewall dropping UDP: check says it is waiting.
		pc, err := net.ListenPacket("udp", l.tunnelAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := pc.ReadFrom(buf); err != nil {
					return
				}
			}
		}()
		// QUIC gives a silent peer half of PQT_HANDSHAKE_TIMEOUT.
		out, code := chkRun(t, ctx, chkDialEnv(t, l.tunnelAddr, "quic", map[string]string{"PQT_HANDSHAKE_TIMEOUT": "10s"}))
		t.Logf("pqtunnel check (exit %d):\n%s", code, out)
		if !chkLine("quic", all, `still waiting: no answer after 2s \(gives up after 5s\)`).MatchString(out) {
			t.Errorf("no progress line after 2s of waiting")
		}
		if !chkLine("quic", all, `still waiting: no answer after 4s`).MatchString(out) {
			t.Errorf("no progress line after 4s of waiting")
		}
		if !regexp.MustCompile(`(?m)^  advice: quic: no answer over UDP`).MatchString(out) {
			t.Errorf("the advice does not say that UDP went unanswered")
		}
	})

	// In strict mode check never authenticates under a classical key
	// exchange: by default it offers no classical group at all, and with
	// --probe-classical it aborts once the peer's certificate arrives, so
	// the peer never sees a completed classical handshake.
	t.Run("classical-only peer", func(t *testing.T) {
		l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": loopback(freePort(t)), "PQT_PQ": "prefer", "PQT_GROUPS": "X25519"})
		out, code := chkRun(t, ctx, chkDialEnv(t, l.tunnelAddr, "auto", nil))
		t.Logf("pqtunnel check (exit %d):\n%s", code, out)
		if code == 0 {
			t.Errorf("check exited 0 against a classical-only peer")
		}
		if !regexp.MustCompile(`(?m)^  advice: tcp: .*--probe-classical`).MatchString(out) {
			t.Errorf("output does not point to --probe-classical")
		}
		if strings.Contains(out, "X25519 (classical") {
			t.Errorf("check offered classical X25519 without --probe-classical")
		}

		out, code = chkRun(t, ctx, chkDialEnv(t, l.tunnelAddr, "auto", nil), "--probe-classical")
		t.Logf("pqtunnel check --probe-classical (exit %d):\n%s", code, out)
		if code == 0 {
			t.Errorf("check --probe-classical exited 0 against a classical-only peer")
		}
		if !regexp.MustCompile(`(?m)^  advice: tcp: .*not post-quantum`).MatchString(out) {
			t.Errorf("output does not say that the peer is not post-quantum")
		}
		if !chkLine("tcp", "X25519 (classical, --probe-classical)", `accepted`).MatchString(out) {
			t.Errorf("no tcp probe line saying the classical probe was accepted")
		}
		if !strings.Contains(out, "verdict: would NOT connect") {
			t.Errorf("output lacks \"verdict: would NOT connect\"")
		}
		if logs := l.stderr.String(); strings.Contains(logs, `"msg":"tunnel connected`) {
			t.Errorf("the classical-only peer completed a handshake with check, which authenticated under classical key exchange:\n%s", logs)
		}
	})

	t.Run("peer does not accept our pin", func(t *testing.T) {
		stranger := identityNamed(t, "stranger")
		l := startListen(t, ctx, 0, "auto", map[string]string{"PQT_TARGET": loopback(freePort(t)), "PQT_PEERS": stranger.pin})
		out, code := chkRun(t, ctx, chkDialEnv(t, l.tunnelAddr, "auto", nil))
		t.Logf("pqtunnel check (exit %d):\n%s", code, out)
		if code == 0 {
			t.Errorf("check exited 0 against a peer that does not accept our pin")
		}
		want := "advice: quic: the peer refused our identity: add our pin " + identityNamed(t, "dial").pin + " to the peer's PQT_PEERS"
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
		// Over tcp the refusal arrives after the client has sent its proof:
		// the listen side lingers so that the alert is read, not a reset.
		if !strings.Contains(out, "advice: tcp: the peer refused our identity: add our pin") {
			t.Errorf("the tcp probe did not recognise the refusal of our pin")
		}
		if strings.Contains(out, "nor any other hybrid group") || strings.Contains(out, "accepts none of") {
			t.Errorf("check blames the groups when the peer refused our pin")
		}
	})

	t.Run("we do not accept the peer's pin", func(t *testing.T) {
		stranger := identityNamed(t, "stranger")
		l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": loopback(freePort(t))})
		out, code := chkRun(t, ctx, chkDialEnv(t, l.tunnelAddr, "tcp", map[string]string{"PQT_PEERS": stranger.pin}))
		t.Logf("pqtunnel check (exit %d):\n%s", code, out)
		if code == 0 {
			t.Errorf("check exited 0 against a peer whose pin we do not accept")
		}
		if !strings.Contains(out, "the peer's identity is not one we accept") {
			t.Errorf("output does not say that the peer's identity is not one we accept")
		}
		if listenPin := identityNamed(t, "listen").pin; !strings.Contains(out, listenPin) {
			t.Errorf("output does not name the peer's pin %s", listenPin)
		}
	})
}

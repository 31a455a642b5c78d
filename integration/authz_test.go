package integration

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
)

// TestRelayRouteBoundToOnePeer runs a relay (reverse mode) accepting two
// origin peers, A and B, with its forward route bound to A: B opens eight
// tunnel connections to attract visitors, yet every visitor reaches A's
// origin and none B's.
func TestRelayRouteBoundToOnePeer(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 90*time.Second)
		originA, originB := startEcho(t), startEcho(t)
		idA, idB := identityNamed(t, "dial"), identityNamed(t, "authz-b")
		web, admin := loopback(freePort(t)), loopback(freePort(t))
		l := startListen(t, ctx, 0, transport, map[string]string{
			"PQT_PEERS":   "origin-a=" + idA.pin + ",origin-b=" + idB.pin + ",origin-c=" + identityNamed(t, "authz-c").pin,
			"PQT_FORWARD": "web=" + web + "@origin-a,admin=" + admin + "@origin-c",
		})
		a := startDial(t, ctx, l.tunnelAddr, transport, []string{}, map[string]string{"PQT_TARGET": "web=" + originA.addr(), "PQT_CONNECTIONS": "1"})
		b := startDial(t, ctx, l.tunnelAddr, transport, []string{}, map[string]string{"PQT_TARGET": "web=" + originB.addr(), "PQT_CONNECTIONS": "8", "PQT_IDENTITY": idB.path})
		wctx := within(t, ctx, 30*time.Second)
		a.waitLog(t, wctx, msgIs("tunnel connected", "transport", transport))
		b.waitLogs(t, wctx, 8, msgIs("tunnel connected", "transport", transport))
		l.waitLog(t, wctx, msgIs("tunnel connected", "transport", transport, "peer", "origin-a"))
		l.waitLogs(t, wctx, 8, msgIs("tunnel connected", "transport", transport, "peer", "origin-b"))

		if n := len(l.logs(msgIs("route open to every accepted peer: name the peers allowed on it with @peer+peer"))); n != 0 {
			t.Errorf("%d open-route warnings for a route with an allow list", n)
		}

		const visitors = 40
		for i := range visitors {
			if err := echoExact(within(t, ctx, 10*time.Second), web, randomBytes(uint64(1200+i), 4<<10)); err != nil {
				t.Fatalf("visitor %d: %v", i, err)
			}
		}
		// origin-c has no tunnel up: its visitors are refused at once, and
		// carried by no other peer.
		if err := expectClosedPromptly(ctx, admin, time.Second); err != nil {
			t.Errorf("visitor of a route whose only peer has no tunnel: %v", err)
		}
		l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("client refused", "route", "admin", "reason", "no tunnel connection of an allowed peer up"))
		gotA, gotB := originA.acceptCount(), originB.acceptCount()
		t.Logf("of %d visitors: origin A %d, origin B %d (B holds 8 tunnel connections, A 1)", visitors, gotA, gotB)
		if gotB != 0 || gotA != visitors {
			t.Errorf("origin A got %d and origin B %d of %d visitors; want all to A, none to B", gotA, gotB, visitors)
		}
	})
}

// TestTargetRouteRefusesOtherPeer runs a listen side whose target route
// "redis" allows only peer app1: the dial side, named app2, is refused with
// the unknown-route answer while its open route works.
func TestTargetRouteRefusesOtherPeer(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	secret, open := startEcho(t), startEcho(t)
	other := identityNamed(t, "authz-b")
	lm := metAddr(t)
	p := startPair(t, ctx, pairOptions{
		transport: "tcp",
		target:    "redis=" + secret.addr() + "@app1,web=" + open.addr() + "@app2",
		routes:    []string{"redis", "web"},
		listenEnv: map[string]string{"PQT_PEERS": "app1=" + other.pin + ",app2=" + identityNamed(t, "dial").pin, "PQT_METRICS": lm},
	})
	if err := echoExact(within(t, ctx, 10*time.Second), p.dial.forward["web"], randomBytes(1300, 4<<10)); err != nil {
		t.Fatalf("allowed route: %v", err)
	}
	if err := expectClosedPromptly(ctx, p.dial.forward["redis"], 3*time.Second); err != nil {
		t.Errorf("route not allowed to the dial side: %v", err)
	}
	refused := p.dial.waitLog(t, within(t, ctx, 5*time.Second), msgIs("stream refused by peer", "route", "redis"))
	if want := `route "redis" is not in the peer's PQT_TARGET (it has: web)`; refused.str("err") != want {
		t.Errorf("the dial side was told %q, want the unknown-route answer %q", refused.str("err"), want)
	}
	p.listen.waitLog(t, within(t, ctx, 5*time.Second), msgIs("stream refused", "reason", "not_allowed", "route", "redis", "peer", "app2"))
	metAwait(t, ctx, "listen side", lm, 5*time.Second, func(m metSet) error {
		return metExpect(m, false, 1, "pqtunnel_streams_not_allowed_total", "route", "redis", "peer", "app2")
	})
	if n := secret.acceptCount(); n != 0 {
		t.Errorf("the origin of the route not allowed got %d connections", n)
	}
}

// TestRevokeLiveTunnel removes a connected peer's pin from the pins file:
// on SIGHUP its live tunnel and the stream through it end within a second,
// while the other peer stays; an emptied pins file then revokes that one too.
func TestRevokeLiveTunnel(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 90*time.Second)
		o := startEcho(t)
		idA, idB := identityNamed(t, "dial"), identityNamed(t, "authz-b")
		pins := filepath.Join(t.TempDir(), "peers")
		write := func(text string) {
			t.Helper()
			if err := os.WriteFile(pins, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		write("app1 " + idA.pin + "\n" + idB.pin + "\n")
		lm := metAddr(t)
		l := startListen(t, ctx, 0, transport, map[string]string{"PQT_TARGET": o.addr(), "PQT_PEERS": pins, "PQT_METRICS": lm})
		peers := func() []string {
			t.Helper()
			_, r, _ := metReadyz(t, ctx, lm)
			var out []string
			for _, tu := range r.Tunnels {
				out = append(out, tu.Peer)
			}
			slices.Sort(out)
			return out
		}
		a := startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_CONNECTIONS": "1"})
		b := startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_CONNECTIONS": "1", "PQT_IDENTITY": idB.path})
		wctx := within(t, ctx, 20*time.Second)
		a.waitLog(t, wctx, msgIs("tunnel connected", "transport", transport))
		b.waitLog(t, wctx, msgIs("tunnel connected", "transport", transport))
		l.waitLog(t, wctx, msgIs("tunnel connected", "peer", "app1"))
		l.waitLog(t, wctx, msgIs("tunnel connected", "peer", idB.pin))
		if n := len(l.logs(msgIs("route open to every accepted peer: name the peers allowed on it with @peer+peer", "level", "WARN", "route", "default"))); n != 1 {
			t.Errorf("%d warnings that the target route is open to both peers, want 1", n)
		}

		if got, want := peers(), []string{"app1", idB.pin}; !slices.Equal(got, want) {
			t.Errorf("/readyz lists peers %v, want %v", got, want)
		}

		fctx := within(t, ctx, 30*time.Second)
		f, err := topoStartFlow(fctx, a.forward[""], randomBytes(1400, 8<<20), 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		f.waitRead(t, fctx, 128<<10)

		write(idB.pin + "\n")
		hup := time.Now()
		l.signal(t, syscall.SIGHUP)
		l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("peer revoked", "peer", "app1"))
		if err := f.wait(within(t, ctx, 5*time.Second)); err == nil {
			t.Fatal("the stream through the revoked tunnel completed")
		}
		took := time.Since(hup)
		t.Logf("revoked tunnel's stream ended %s after SIGHUP", took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("the revoked tunnel's stream ended %s after SIGHUP, want within 1s", took)
		}
		a.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel disconnected"))
		if n := len(l.logs(msgIs("peer revoked"))); n != 1 {
			t.Errorf("%d 'peer revoked' lines after removing one pin, want 1", n)
		}
		if got, want := peers(), []string{idB.pin}; !slices.Equal(got, want) {
			t.Errorf("/readyz lists peers %v after the revocation, want %v", got, want)
		}
		metAwait(t, ctx, "listen side", lm, 5*time.Second, func(m metSet) error {
			return metExpect(m, false, 1, "pqtunnel_tunnels_revoked_total", "peer", "app1")
		})
		if err := echoExact(within(t, ctx, 10*time.Second), b.forward[""], randomBytes(1401, 64<<10)); err != nil {
			t.Fatalf("the peer still listed: %v", err)
		}

		write("# nobody\n")
		l.signal(t, syscall.SIGHUP)
		l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("PQT_PEERS lists no peer: every peer is refused and live tunnels are closed"))
		l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("peer revoked", "peer", idB.pin))
		if err := expectClosedPromptly(ctx, b.forward[""], 2*time.Second); err != nil {
			t.Errorf("client of a peer revoked by an empty pins file: %v", err)
		}
		if got := peers(); len(got) != 0 {
			t.Errorf("/readyz lists peers %v after an empty pins file, want none", got)
		}

		// A pins file that does not parse keeps the material in force.
		write(idB.pin + "\nnot-a-pin\n")
		l.signal(t, syscall.SIGHUP)
		failed := l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("reload failed: keeping the identity and pins in force", "level", "ERROR"))
		if !strings.Contains(failed.str("err"), "line 2") {
			t.Errorf("reload failure %q does not name the line at fault", failed.str("err"))
		}
	})
}

// TestCAModeTunnelClosesAtCertificateExpiry gives a CA-mode dial side a
// certificate valid for a few seconds: the listen side warns at once that
// it expires soon and closes the tunnel, with its open stream, when it does.
func TestCAModeTunnelClosesAtCertificateExpiry(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		dir := t.TempDir()
		ca := testca.New(t, "ca").Save(t, dir)
		now := time.Now()
		server := ca.Issue(t, testca.Leaf{DNS: []string{"server.example"}}).Save(t, dir, "server")
		short := ca.Issue(t, testca.Leaf{DNS: []string{"good.example"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(8 * time.Second)}).Save(t, dir, "short")
		notAfter := short.Leaf.NotAfter // whole seconds, as X.509 stores it
		o := startEcho(t)
		l := startListen(t, ctx, 0, transport, hosCAEnv(server, ca, map[string]string{
			"PQT_TARGET": o.addr(),
			"PQT_ALLOW":  "app=dns:good.example",
		}))
		d := startDial(t, ctx, l.tunnelAddr, transport, nil, hosCAEnv(short, ca, map[string]string{
			"PQT_CONNECTIONS": "1",
			"PQT_SERVER_NAME": "server.example",
		}))
		wctx := within(t, ctx, 20*time.Second)
		d.waitLog(t, wctx, msgIs("tunnel connected", "transport", transport))
		l.waitLog(t, wctx, msgIs("tunnel connected", "transport", transport, "peer", "app"))
		l.waitLog(t, wctx, msgIs("peer certificate expires soon: its tunnel closes then", "level", "WARN", "peer", "app"))
		if time.Until(notAfter) < time.Second {
			t.Skip("the tunnel came up too late to observe a stream before the certificate expired (a loaded machine)")
		}
		fctx := within(t, ctx, 30*time.Second)
		f, err := topoStartFlow(fctx, d.forward[""], randomBytes(1500, 16<<20), 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.wait(fctx); err == nil {
			t.Fatal("the stream through the expired peer's tunnel completed")
		}
		late := time.Since(notAfter)
		revoked := l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("peer revoked", "peer", "app", "reason", "certificate expired"))
		t.Logf("tunnel of the expired certificate closed %s after its NotAfter", late.Round(time.Millisecond))
		if late < 0 || late > time.Second {
			t.Errorf("the stream ended %s after the certificate's NotAfter, want within 1s after it (%v)", late, revoked)
		}
	})
}

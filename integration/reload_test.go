package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadPins runs a listen side whose identity and accepted pins are
// files, and changes them under SIGHUP: a newly listed dial side gets in
// without disturbing an established stream, and a broken identity file is
// refused with the old identity kept in force.
func TestReloadPins(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		dir := t.TempDir()
		idA, idB := identityNamed(t, "dial"), identityNamed(t, "reload-b")

		// The listen side's own copy of its identity, so that it can be broken.
		idPath := filepath.Join(dir, "listen.id")
		data, err := os.ReadFile(identityNamed(t, "listen").path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(idPath, data, 0o600); err != nil {
			t.Fatal(err)
		}
		pins := filepath.Join(dir, "peers")
		if err := os.WriteFile(pins, []byte("# accepted dial sides\n"+idA.pin+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		l := startListen(t, ctx, 0, transport, map[string]string{"PQT_TARGET": o.addr(), "PQT_IDENTITY": idPath, "PQT_PEERS": pins})

		a := startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_CONNECTIONS": "1"})
		wctx := within(t, ctx, 15*time.Second)
		a.waitLog(t, wctx, msgIs("tunnel connected", "transport", transport))
		l.waitLog(t, wctx, msgIs("tunnel connected", "transport", transport, "peer", idA.pin))

		b := startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_CONNECTIONS": "1", "PQT_IDENTITY": idB.path})
		refused := l.waitLog(t, wctx, msgIs("tunnel handshake refused", "reason", "peer_not_allowed"))
		if !strings.Contains(refused.str("err"), idB.pin) {
			t.Errorf("refusal %q does not name B's pin", refused.str("err"))
		}
		b.waitLog(t, wctx, msgIs("tunnel dial failed"))
		if err := expectClosedPromptly(ctx, b.forward[""], time.Second); err != nil {
			t.Errorf("B's client before B is allowed: %v", err)
		}

		// A slow transfer from A runs across both reloads.
		fctx := within(t, ctx, 30*time.Second)
		f, err := topoStartFlow(fctx, a.forward[""], randomBytes(1100, 4<<20), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		f.waitRead(t, fctx, 256<<10)

		if err := os.WriteFile(pins, []byte("# accepted dial sides\n"+idA.pin+"\n"+idB.pin+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		l.signal(t, syscall.SIGHUP)
		reloaded := l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("reloaded identity and pins"))
		if reloaded.str("peers") != "2" {
			t.Errorf("reloaded with %s peers, want 2", reloaded.str("peers"))
		}
		if f.isDone() {
			t.Fatal("A's transfer ended before the reload: the test proves nothing")
		}
		hup := time.Now()
		// B retries with backoff; it has failed for a short while only.
		b.waitLog(t, within(t, ctx, 10*time.Second), msgIs("tunnel connected", "transport", transport))
		l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel connected", "transport", transport, "peer", idB.pin))
		t.Logf("B connected %s after SIGHUP", time.Since(hup).Round(time.Millisecond))
		if err := echoExact(within(t, ctx, 10*time.Second), b.forward[""], randomBytes(1101, 256<<10)); err != nil {
			t.Fatalf("B's traffic after the reload: %v", err)
		}

		// A broken identity file: the reload fails and the old identity stays.
		if err := os.WriteFile(idPath, []byte("-----BEGIN GARBAGE-----\nnot an identity\n-----END GARBAGE-----\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		l.signal(t, syscall.SIGHUP)
		failed := l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("reload failed: keeping the identity and pins in force"))
		if !strings.Contains(failed.str("err"), "PQT_IDENTITY") {
			t.Errorf("reload failure %q does not name PQT_IDENTITY", failed.str("err"))
		}
		if f.isDone() {
			t.Logf("A's transfer ended before the failed reload (a slow machine)")
		}
		if err := f.wait(fctx); err != nil {
			t.Fatalf("A's transfer across SIGHUP: %v", err)
		}
		// A new dial side that pins the old listen identity still gets in.
		c := startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_CONNECTIONS": "1"})
		c.waitLog(t, within(t, ctx, 15*time.Second), msgIs("tunnel connected", "transport", transport, "peer", identityNamed(t, "listen").pin))
		if err := echoExact(within(t, ctx, 10*time.Second), c.forward[""], randomBytes(1102, 256<<10)); err != nil {
			t.Fatalf("new tunnel after a failed reload: %v", err)
		}
		if err := echoExact(within(t, ctx, 10*time.Second), a.forward[""], randomBytes(1103, 256<<10)); err != nil {
			t.Fatalf("A's new client after the reloads: %v", err)
		}
		for _, s := range []*side{a, b} {
			if n := len(s.logs(msgIs("tunnel disconnected"))); n != 0 {
				t.Errorf("%s lost %d tunnel connections over the reloads", s.name, n)
			}
		}
	})
}

package integration

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// TestUnixRoutesJoinTLSRoutes: with no tunnel, a unix:// forward route
// joined to a tls:// target originates TLS to a pqtunnel terminator, whose
// tls:// forward route is joined to a unix:// target, an echo on a Unix
// socket; a client's half-close crosses both TLS hops and both sockets.
// PQT_UNIX_MODE sets the forward socket's mode.
func TestUnixRoutesJoinTLSRoutes(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	dir := t.TempDir()
	ca := hosNewCA(t, dir, "ca")
	leaf := trIssue(t, ca, dir, "web", false, "web.example.test")

	echoSock := filepath.Join(dir, "echo.sock")
	transporttest.EchoOriginOn(t, "unix", echoSock)

	termAddr := loopback(freePort(t))
	trLocal(t, ctx, "terminator", 1, map[string]string{
		"PQT_FORWARD": "web=tls://" + termAddr, "PQT_TARGET": "web=unix://" + echoSock,
		"PQT_TLS_CERT": leaf.certPath, "PQT_TLS_KEY": leaf.keyPath,
	})
	fwdSock := filepath.Join(dir, "fwd.sock")
	o := trLocal(t, ctx, "originator", 1, map[string]string{
		"PQT_FORWARD": "web=unix://" + fwdSock, "PQT_TARGET": "web=tls://" + termAddr,
		"PQT_TLS_CA": ca.path, "PQT_TLS_SERVER_NAME": "web=web.example.test", "PQT_UNIX_MODE": "0600",
	})
	if fi, err := os.Lstat(fwdSock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("forward socket with PQT_UNIX_MODE=0600: %v, %v", fi, err)
	}
	if err := echoExactOn(within(t, ctx, 30*time.Second), "unix", fwdSock, randomBytes(7, 256<<10)); err != nil {
		t.Fatalf("echo through unix:// → tls:// → tls:// → unix://: %v", err)
	}
	l := o.waitLog(t, within(t, ctx, 10*time.Second), msgIs("TLS connected", "tls", "originate", "route", "web"))
	if l.str("group") != "X25519MLKEM768" {
		t.Errorf("originated TLS group %s, want X25519MLKEM768", l.str("group"))
	}
}

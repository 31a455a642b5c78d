package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
)

// TestUnixRoutesJoinTLSRoutes: with no tunnel, a unix:// forward route
// joined to a tls:// target originates TLS to a pqtunnel terminator, whose
// tls:// forward route is joined to a unix:// target, an echo on a Unix
// socket; a client's half-close crosses both TLS hops and both sockets.
// PQT_UNIX_MODE sets the forward socket's mode. With PQT_ACCESS_LOG=on
// each side logs the local join's one access line with its bytes.
func TestUnixRoutesJoinTLSRoutes(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	dir := t.TempDir()
	ca := testca.New(t, "ca").Save(t, dir)
	leaf := ca.Issue(t, testca.Leaf{DNS: []string{"web.example.test"}}).Save(t, dir, "web")

	echoSock := filepath.Join(dir, "echo.sock")
	testutil.EchoOriginOn(t, "unix", echoSock)

	termAddr := loopback(freePort(t))
	term := trLocal(t, ctx, "terminator", 1, map[string]string{
		"PQT_FORWARD": "web=tls://" + termAddr, "PQT_TARGET": "web=unix://" + echoSock,
		"PQT_TLS_CERT": leaf.CertPath, "PQT_TLS_KEY": leaf.KeyPath, "PQT_ACCESS_LOG": "on",
	})
	fwdSock := filepath.Join(dir, "fwd.sock")
	o := trLocal(t, ctx, "originator", 1, map[string]string{
		"PQT_FORWARD": "web=unix://" + fwdSock, "PQT_TARGET": "web=tls://" + termAddr,
		"PQT_TLS_CA": ca.Path, "PQT_TLS_SERVER_NAME": "web=web.example.test", "PQT_UNIX_MODE": "0600",
		"PQT_ACCESS_LOG": "on",
	})
	if fi, err := os.Lstat(fwdSock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("forward socket with PQT_UNIX_MODE=0600: %v, %v", fi, err)
	}
	payload := randomBytes(7, 256<<10)
	if err := echoExactOn(within(t, ctx, 30*time.Second), "unix", fwdSock, payload); err != nil {
		t.Fatalf("echo through unix:// → tls:// → tls:// → unix://: %v", err)
	}
	n := strconv.Itoa(len(payload))
	o.waitLog(t, within(t, ctx, 10*time.Second), msgIs("connection", "direction", "local", "route", "web", "client", "unix:"+fwdSock,
		"target", termAddr, "bytes_up", n, "bytes_down", n, "end", "closed"))
	in := term.waitLog(t, within(t, ctx, 10*time.Second), msgIs("connection", "direction", "local", "route", "web",
		"target", echoSock, "bytes_up", n, "bytes_down", n, "end", "closed"))
	if in.str("client") == "" {
		t.Errorf("terminator's access line has no client: %v", in)
	}
	l := o.waitLog(t, within(t, ctx, 10*time.Second), msgIs("TLS connected", "tls", "originate", "route", "web"))
	if l.str("group") != "X25519MLKEM768" {
		t.Errorf("originated TLS group %s, want X25519MLKEM768", l.str("group"))
	}
}

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// modeGhostunnel is the same client speaking TLS to ghostunnel in server
// mode, which terminates it to the same origin: the terminator pqtunnel's
// tls:// routes are compared with.
const modeGhostunnel = "ghostunnel"

// ghostunnelArgs are the arguments of one ghostunnel server terminating TLS
// on listen with the given certificate and delivering plaintext to target.
// Clients present no certificate, as with the pqtunnel terminator; only
// per-connection log lines are silenced, as pqtunnel runs at level warn.
func ghostunnelArgs(listen, target, certPath, keyPath string) []string {
	return []string{"server", "--listen", listen, "--target", target, "--cert", certPath, "--key", keyPath,
		"--disable-authentication", "--quiet=conns"}
}

// ghostunnelVersion is the first line ghostunnel prints for --version.
func ghostunnelVersion(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", bin, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line, nil
}

// startGhostunnels starts one ghostunnel server per route of the origin
// (ghostunnel has one target per process) and returns the addresses they
// listen on, once each completes a TLS handshake, and the group that the
// echo route's handshake negotiated.
func (b *bench) startGhostunnels(ctx context.Context, sup *supervisor, certPath, keyPath string, pool *x509.CertPool) (map[string]string, []*child, string, error) {
	routes := map[string]string{}
	var started []*child
	var group string
	dial := tlsDialer(pool)
	for _, r := range []string{routeEcho, routeSink, routeSource} {
		var lastErr error
		for range 3 {
			p, err := testutil.FreePort()
			if err != nil {
				return nil, started, "", err
			}
			addr := testutil.Loopback(p)
			c, err := sup.start("ghostunnel-"+r, b.o.ghostunnel, ghostunnelArgs(addr, b.org.addr(r), certPath, keyPath), nil)
			if err != nil {
				return nil, started, "", err
			}
			var g string
			if g, lastErr = waitTLSReady(ctx, c, dial, addr, 20*time.Second); lastErr == nil {
				if r == routeEcho {
					group = g
				}
				sup.watch(c)
				started = append(started, c)
				routes[r] = addr
				break
			}
			sup.stop(c)
			if !strings.Contains(c.out.String(), "address already in use") {
				return nil, started, "", lastErr
			}
		}
		if lastErr != nil {
			return nil, started, "", lastErr
		}
	}
	return routes, started, group, nil
}

// waitTLSReady polls addr until a TLS handshake with it completes, c exits,
// or timeout passes, and returns the key-exchange group it negotiated.
// ghostunnel's status endpoint would need another port; a handshake is what
// the measurement needs anyway.
func waitTLSReady(ctx context.Context, c *child, dial dialFunc, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		conn, err := dial(ctx, addr)
		if err == nil {
			g := hybridtls.GroupName(conn.(*tls.Conn).ConnectionState().CurveID)
			_ = conn.Close() // only the handshake was wanted
			return g, nil
		}
		lastErr = err
		select {
		case <-c.done:
			return "", fmt.Errorf("%s exited (%v): %s", c.name, c.proc.Err(), c.out.String())
		case <-ctx.Done():
			return "", fmt.Errorf("%s: no TLS handshake on %s within %s: %w; its output: %s", c.name, addr, timeout, lastErr, c.out.String())
		case <-tick.C:
		}
	}
}

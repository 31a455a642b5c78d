package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// modeTLS is a client speaking standard TLS 1.3 to a pqtunnel that
// terminates it on tls:// forward routes joined locally to the origin (no
// tunnel): what a browser in front of a legacy service costs.
const modeTLS = "tls_terminate"

// tlsServerName is the name on the terminator's certificate.
const tlsServerName = "bench.example"

// writeBenchCert writes a self-signed ECDSA P-256 certificate for
// tlsServerName and its key to dir, and returns their paths and a pool
// that trusts it.
func writeBenchCert(dir string) (certPath, keyPath string, pool *x509.CertPool, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: tlsServerName}, DNSNames: []string{tlsServerName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return "", "", nil, err
	}
	pk8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", nil, err
	}
	certPath, keyPath = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", nil, err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8}), 0o600); err != nil {
		return "", "", nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", "", nil, err
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certPath, keyPath, pool, nil
}

// tlsDialer dials TLS to the terminator with Go's default groups (which
// put X25519MLKEM768 first), or only the groups given, and no session cache:
// every connection is a full handshake.
func tlsDialer(pool *x509.CertPool, groups ...tls.CurveID) dialFunc {
	cfg := &tls.Config{RootCAs: pool, ServerName: tlsServerName, MinVersion: tls.VersionTLS13, CurvePreferences: groups}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
		return d.DialContext(ctx, "tcp", addr)
	}
}

// tlsPath is how a client of the tls phase reaches the origin: its dialer
// and the address of each route.
type tlsPath struct {
	dial   dialFunc
	routes map[string]string
}

// runTLSPhase starts a terminator and measures, against direct TCP in the
// same repetitions, the connection rate and 1-stream bulk through it (and
// through ghostunnel when -ghostunnel names it), and the full handshakes per
// second it completes for each group.
func (b *bench) runTLSPhase(ctx context.Context, bin, dir string, sup *supervisor) error {
	certPath, keyPath, pool, err := writeBenchCert(dir)
	if err != nil {
		b.failed("tls terminator certificate", err)
		return nil
	}
	routes := map[string]string{}
	term, _, err := startSide(ctx, sup, bin, "tls-terminator", 0, func() (map[string]string, error) {
		var fwd, tgt []string
		for _, r := range []string{routeEcho, routeSink, routeSource} {
			p, err := testutil.FreePort()
			if err != nil {
				return nil, err
			}
			routes[r] = testutil.Loopback(p)
			fwd = append(fwd, r+"=tls://"+routes[r])
			tgt = append(tgt, r+"="+b.org.addr(r))
		}
		// prefer, so that X25519 can be measured beside the hybrids.
		return map[string]string{
			"PQT_FORWARD": strings.Join(fwd, ","), "PQT_TARGET": strings.Join(tgt, ","),
			"PQT_TLS_CERT": certPath, "PQT_TLS_KEY": keyPath,
			"PQT_PQ": "prefer", "PQT_GROUPS": handshakeGroups, "PQT_LOG_LEVEL": "warn",
		}, nil
	})
	if err != nil {
		b.failed("tls terminator", err)
		return nil
	}
	defer sup.stop(term)
	group, err := waitTLSReady(ctx, term, tlsDialer(pool), routes[routeEcho], 10*time.Second)
	if err != nil {
		b.failed("tls terminator handshake", err)
		return nil
	}
	b.res.Meta.Processes = append(b.res.Meta.Processes, fmt.Sprintf("%s: local pqtunnel pid %d terminating TLS (PQT_PQ=prefer PQT_GROUPS=%s, ECDSA P-256 certificate, log level warn), negotiates %s with the client's default groups", modeTLS, term.pid(), handshakeGroups, group))
	paths := map[string]tlsPath{
		modeDirect: {dialLoopback, b.top.paths[modeDirect].routes},
		modeTLS:    {tlsDialer(pool), routes},
	}
	modes := []string{modeDirect, modeTLS}
	if b.o.ghostunnel == "" {
		b.note("%s: not compared with ghostunnel (no -ghostunnel binary given)", modeTLS)
	} else {
		ver, err := ghostunnelVersion(ctx, b.o.ghostunnel)
		if err != nil {
			b.failed("ghostunnel", err)
			return nil
		}
		groutes, gs, ggroup, err := b.startGhostunnels(ctx, sup, certPath, keyPath, pool)
		for _, c := range gs {
			defer sup.stop(c)
		}
		if err != nil {
			b.failed("ghostunnel", err)
			return nil
		}
		pids := make([]string, len(gs))
		for i, c := range gs {
			pids[i] = fmt.Sprint(c.pid())
		}
		b.res.Meta.Processes = append(b.res.Meta.Processes, fmt.Sprintf("%s: %s (%s), server mode, pids %s, one per route, the same ECDSA P-256 certificate, no client authentication, --quiet=conns, negotiates %s", modeGhostunnel, b.o.ghostunnel, ver, strings.Join(pids, " "), ggroup))
		paths[modeGhostunnel] = tlsPath{tlsDialer(pool), groutes}
		modes = append(modes, modeGhostunnel)
	}
	warm := b.o.warm / 2
	for rep := range b.o.reps {
		b.progress("terminated TLS, repetition %d of %d", rep+1, b.o.reps)
		for _, m := range rotate(modes, rep) {
			p := paths[m]
			for _, spec := range []struct {
				name    string
				workers int
			}{{"sequential_tls", 1}, {"concurrent_32_tls", 32}} {
				s, err := runConnRate(ctx, p.dial, p.routes[routeEcho], spec.workers, warm, b.o.rate, nil)
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				if err == nil && s.errors > 0 {
					err = fmt.Errorf("%d of the connections failed, first: %w", s.errors, s.firstErr)
				}
				if err != nil {
					b.col.fail(spec.name+"_rate", "conn/s", m, err)
					b.failed(fmt.Sprintf("connection rate %s %s", spec.name, m), err)
					if s.rate == 0 {
						continue
					}
				}
				b.col.add(spec.name+"_rate", "conn/s", m, rep, s.rate)
				b.col.add(spec.name+"_p50", "ms", m, rep, s.p50)
			}
			for _, spec := range bulkSpecs[:2] {
				addr := p.routes[routeSource]
				if spec.upload {
					addr = p.routes[routeSink]
				}
				name := spec.name + "_tls_terminated"
				s, err := runBulk(ctx, b.org, p.dial, addr, spec.upload, false, spec.streams, b.o.warm, b.o.bulk, nil)
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				if err != nil {
					b.col.fail(name, "MB/s", m, err)
					b.failed(fmt.Sprintf("bulk %s %s", name, m), err)
					continue
				}
				b.col.add(name, "MB/s", m, rep, s.mbps)
			}
		}
		if err := b.org.waitIdle(ctx, routeEcho, 10*time.Second); err != nil {
			b.failed("terminated TLS teardown", err)
		}
		groups := slices.Clone(handshakeGroupList)
		k := rep % len(groups)
		for _, g := range append(groups[k:], groups[:k]...) {
			key := modeTLS + "/" + hybridtls.GroupName(g)
			acc := b.hs[key]
			if acc == nil {
				acc = &hsAcc{fig: HandshakeFigure{Transport: modeTLS, Group: hybridtls.GroupName(g)}}
				b.hs[key] = acc
			}
			rate, p50, err := runTLSHandshakes(ctx, tlsDialer(pool, g), routes[routeEcho], g, b.o.handshake)
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if err != nil {
				acc.fig.Errors = append(acc.fig.Errors, err.Error())
				b.failed("handshake "+key, err)
				continue
			}
			acc.rates = append(acc.rates, sample{rep, rate})
			acc.p50 = append(acc.p50, p50)
		}
	}
	return nil
}

// runTLSHandshakes completes full handshakes with group g one after another
// for window and returns how many per second and the median in ms.
func runTLSHandshakes(ctx context.Context, dial dialFunc, addr string, g tls.CurveID, window time.Duration) (float64, float64, error) {
	var lat []time.Duration
	start := time.Now()
	for time.Since(start) < window && ctx.Err() == nil {
		t := time.Now()
		c, err := dial(ctx, addr)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", hybridtls.GroupName(g), err)
		}
		got := c.(*tls.Conn).ConnectionState().CurveID
		_ = c.Close() // the handshake is what is measured
		if got != g {
			return 0, 0, fmt.Errorf("asked for %s, negotiated %s", hybridtls.GroupName(g), hybridtls.GroupName(got))
		}
		lat = append(lat, time.Since(t))
	}
	if len(lat) == 0 {
		return 0, 0, fmt.Errorf("%s: no handshake completed", hybridtls.GroupName(g))
	}
	slices.Sort(lat)
	return float64(len(lat)) / time.Since(start).Seconds(), ms(percentile(lat, 0.5)), nil
}

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/lmittmann/tint"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/proxy"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// demo runs a complete local setup in one process: an echo and an HTTP
// origin, a listen side in front of them, and one dial side per transport.
func demo(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "demo", "run an echo and an HTTP origin, a listen side and a dial side per transport in this process, push traffic through, and keep running until Ctrl-C")
	if err := fs.parse(args, 0, stdout, stderr); err != nil {
		return err
	}
	log := slog.New(tint.NewTextHandler(stderr, &tint.Options{Level: slog.LevelInfo, NoColor: !isTerminal(stderr)}))
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()

	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: echo origin: %w", err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: http origin: %w", err)
	}
	var origins sync.WaitGroup
	origins.Add(2)
	go func() { defer origins.Done(); serveEcho(echoLn) }()
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the origin behind pqtunnel (you are %s)\n", r.RemoteAddr)
	})}
	go func() { defer origins.Done(); _ = srv.Serve(httpLn) }() // ends with ErrServerClosed
	defer func() {
		_ = echoLn.Close() // stopping the demo
		_ = srv.Close()
		origins.Wait()
	}()

	listenID, err := pinned.GenerateIdentity()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	dialID, err := pinned.GenerateIdentity()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	targets := []proxy.Route{{Name: "echo", Addr: echoLn.Addr().String()}, {Name: "http", Addr: httpLn.Addr().String()}}
	auto, err := transport.Lookup(transport.FallbackName)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	listen, err := demoEngine(proxy.ModeListen, auto, "127.0.0.1:0", listenID, dialID, nil, targets, log.With("side", "listen"))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "origins:     echo %s, http %s\n", echoLn.Addr(), httpLn.Addr())
	fmt.Fprintf(stdout, "listen side: tunnel on %s (QUIC on UDP and TLS/TCP on the same port), pin %s\n", listen.TunnelAddr(), listenID.Pin)

	var engines sync.WaitGroup
	start := func(e *proxy.Engine) {
		engines.Add(2)
		go func() { defer engines.Done(); _ = e.Run(context.Background()) }() // ErrClosed once shut down below
		go func() {
			defer engines.Done()
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = e.Shutdown(sctx) // past the second the demo's streams are closed: it is ending
		}()
	}
	start(listen)
	var dials []*proxy.Engine
	for _, tr := range basicTransports {
		fwd := []proxy.Route{{Name: "echo", Addr: "127.0.0.1:0"}, {Name: "http", Addr: "127.0.0.1:0"}}
		d, err := demoEngine(proxy.ModeDial, tr, listen.TunnelAddr().String(), dialID, listenID, fwd, nil, log.With("side", "dial-"+tr.Name()))
		if err != nil {
			cancel()
			engines.Wait()
			return err
		}
		dials = append(dials, d)
		start(d)
	}
	defer engines.Wait()
	defer cancel()

	for i, d := range dials {
		info, err := waitTunnel(ctx, d)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		addrs := d.ForwardAddrs()
		n, elapsed, err := echoThrough(addrs[0].String(), 4<<20)
		if err != nil {
			return fmt.Errorf("demo: echo through %s: %w", info.Transport, err)
		}
		fmt.Fprintf(stdout, "dial side %d: transport=%s group=%s peer=%s handshake=%s\n", i+1, info.Transport,
			hybridtls.GroupName(info.TLS.CurveID), info.Peer.Name, info.Handshake.Round(10*time.Microsecond))
		fmt.Fprintf(stdout, "  pushed %d MiB through the echo route and back, byte-exact, in %s\n", n>>20, elapsed.Round(time.Millisecond))
		echo := addrs[0].(*net.TCPAddr)
		fmt.Fprintf(stdout, "  try:  curl http://%s/     or     nc %s %d   (echo)\n", addrs[1], echo.IP, echo.Port)
	}
	fmt.Fprintln(stdout, "running; press Ctrl-C to stop")
	<-ctx.Done()
	return nil
}

func demoEngine(mode proxy.Mode, tr transport.Transport, tunnel string, self, peer *pinned.Identity, fwd, tgt []proxy.Route, log *slog.Logger) (*proxy.Engine, error) {
	store, err := hybridtls.NewStore(hybridtls.Policy{
		Mode: hybridtls.Strict, Groups: hybridtls.DefaultGroups, ALPN: wire.ALPN, Logger: log,
	}, &pinned.Authenticator{Identity: self, Peers: []pinned.Pin{peer.Pin}})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	e, err := proxy.New(proxy.Config{
		Mode: mode, Tunnel: []string{tunnel}, Transport: tr, Connections: 1,
		Forward: fwd, Target: tgt, TLS: store, DrainTimeout: time.Second, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	return e, nil
}

func waitTunnel(ctx context.Context, e *proxy.Engine) (transport.Info, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		changed := e.TunnelsChanged()
		if t := e.Tunnels(); len(t) > 0 {
			return t[0], nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return transport.Info{}, errors.New("no tunnel connection came up within 15s")
		}
	}
}

// echoThrough sends n random bytes through an echo route, half-closes, and
// checks that exactly the same bytes come back.
func echoThrough(addr string, n int) (int, time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // bounds the demo if something is wrong
	payload := make([]byte, n)
	_, _ = rand.Read(payload) // crypto/rand does not fail
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return 0, 0, werr
	}
	if err != nil {
		return 0, 0, err
	}
	if !bytes.Equal(got, payload) {
		return 0, 0, fmt.Errorf("echo returned %d bytes that differ from the %d sent", len(got), n)
	}
	return n, time.Since(start), nil
}

// serveEcho echoes each connection, passing the client's FIN back.
func serveEcho(ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			_, _ = io.Copy(c, c) // the client sees any failure as a short echo
			_ = c.(*net.TCPConn).CloseWrite()
		}()
	}
}

package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// The relay carries a connection's bytes both ways to its target, passes
// the client's half-close on, and stops when stdin closes.
func TestRelayCarriesBothWaysAndStopsWithStdin(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		got, _ := io.ReadAll(c) // until the client's half-close arrives
		_, _ = c.Write(bytes.ToUpper(got))
	}()
	stdinR, stdinW := io.Pipe()
	var out testutil.Output
	exited := make(chan int, 1)
	go func() { exited <- serveRelay("127.0.0.1:0", ln.Addr().String(), stdinR, &out) }()
	var addr string
	for deadline := time.Now().Add(5 * time.Second); addr == ""; {
		if _, rest, ok := strings.Cut(out.String(), relayReady); ok {
			addr, _, _ = strings.Cut(rest, "\n")
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay did not say where it listens: %q", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	pingUpper(t, addr, "the relay")
	_ = stdinW.Close()
	select {
	case code := <-exited:
		if code != 0 {
			t.Errorf("relay exited %d: %s", code, out.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not stop when stdin closed")
	}
}

// The haproxy relays path carries a connection's bytes both ways through
// both haproxy processes to its target, and stopping the run stops both.
func TestHAProxyPathCarriesBothWaysThroughTwoProcesses(t *testing.T) {
	if haproxyPath() == "" {
		t.Fatal("haproxy is not installed: install it with apt-get install -y haproxy (scripts/test-deps does this)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				got, _ := io.ReadAll(c)
				_, _ = c.Write(bytes.ToUpper(got))
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sup := newSupervisor(ctx)
	defer sup.stopAll()
	p, version, err := startHAProxyPath(ctx, sup, t.TempDir(), routeRedis, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.ToLower(version), "haproxy") {
		t.Errorf("version %q does not name haproxy", version)
	}
	if p.routes[routeRedis] == "" || p.dial == nil || p.listen == nil || p.dial == p.listen {
		t.Fatalf("path %+v: want a route and two processes", p)
	}
	pingUpper(t, p.routes[routeRedis], "haproxy")
	sup.stopAll()
	for _, c := range []*child{p.dial, p.listen} {
		if !c.exited() {
			t.Errorf("%s still runs after stopAll", c.name)
		}
	}
}

// pingUpper sends "ping" to addr, half-closes, and fails the test unless
// the answer, read to its end, is "PING": the upper-casing target of the
// relay tests, reached through what.
func pingUpper(t *testing.T, addr, what string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	_ = c.Close()
	if err != nil || string(got) != "PING" {
		t.Fatalf("through %s: %q, %v; want PING", what, got, err)
	}
}

package main

import (
	"bytes"
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
		t.Fatalf("through the relay: %q, %v; want PING", got, err)
	}
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

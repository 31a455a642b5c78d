package testutil

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// EchoOrigin runs a TCP echo origin on loopback that half-closes after
// echoing, and returns its address; it stops and waits for its
// connections at cleanup.
func EchoOrigin(t testing.TB) string { return EchoOriginOn(t, "tcp", "127.0.0.1:0") }

// EchoOriginOn is EchoOrigin on any stream network that half-closes
// ("tcp", "unix"), listening on addr.
func EchoOriginOn(t testing.TB, network, addr string) string {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	ServeEcho(t, ln)
	return ln.Addr().String()
}

// ServeEcho echoes every connection ln accepts until the test ends, each
// half-closed once the client's FIN has been echoed.
func ServeEcho(t testing.TB, ln net.Listener) {
	Serve(t, ln, func(c net.Conn) {
		if _, err := io.Copy(c, c); err == nil {
			_ = c.(interface{ CloseWrite() error }).CloseWrite() // a failure shows as a short echo
		}
	})
}

// ServeTLS runs a crypto/tls server with cfg on loopback that serves each
// connection with handle until the test ends, and returns its address.
func ServeTLS(t testing.TB, cfg *tls.Config, handle func(net.Conn)) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	Serve(t, ln, handle)
	return ln.Addr().String()
}

// Serve calls handle in a goroutine of its own for every connection ln
// accepts, with a 30 s deadline on it so that a stuck test still ends,
// and closes the connection when handle returns. At cleanup it closes ln
// and waits for the handlers.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // a stuck test ends anyway
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close() // stops the accept loop
		wg.Wait()
	})
}

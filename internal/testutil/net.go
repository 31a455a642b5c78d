package testutil

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TCPPair returns both ends of a loopback TCP connection with a 30 s
// deadline, so that a hang fails the test rather than the run; both close
// at cleanup.
func TCPPair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		_ = c.Close() // the test fails anyway
		t.Fatal(r.err)
	}
	client, server = c.(*net.TCPConn), r.c.(*net.TCPConn)
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range []*net.TCPConn{client, server} {
		_ = c.SetDeadline(deadline)
		t.Cleanup(func() { _ = c.Close() })
	}
	return client, server
}

// ClosedAddr returns a loopback address where nothing listens.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // only reserved the number
	return addr
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// FreePort returns a loopback port number free for both TCP and UDP at the
// time of the call, never one it returned before in this process: a
// listener started on it later may still find it taken, which callers
// retry.
func FreePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	var lastErr error
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", Loopback(port))
		_ = ln.Close() // only probing
		if err != nil {
			lastErr = err
			continue
		}
		_ = pc.Close() // only probing
		if portsUsed[port] {
			continue
		}
		portsUsed[port] = true
		return port, nil
	}
	if lastErr == nil {
		lastErr = errors.New("every port offered was one returned before")
	}
	return 0, fmt.Errorf("find a port free for both TCP and UDP: %w", lastErr)
}

// Port is FreePort failing t when there is none.
func Port(t testing.TB) int {
	t.Helper()
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Loopback is 127.0.0.1:port.
func Loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// RandomBytes returns n random bytes, payloads that a copy could not pass
// by accident.
func RandomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

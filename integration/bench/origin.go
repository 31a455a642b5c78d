package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Route names, the same at the origin, in PQT_TARGET and in PQT_FORWARD.
const (
	routeEcho   = "echo"   // echoes every byte, passing the client's FIN back
	routeSink   = "sink"   // discards; counts what it received (upload)
	routeSource = "source" // sends until the client half-closes (download)
)

var routeNames = []string{routeEcho, routeSink, routeSource}

// routeIdle leads to the echo helper process, which holds the origin ends
// of the idle connections so that the harness needs one file per connection.
const routeIdle = "idle"

// chunkSize is the size of each write in bulk transfers, both ways.
const chunkSize = 64 << 10

// payload is what bulk transfers send, written and never changed.
var payload = func() []byte {
	b := make([]byte, chunkSize)
	r := rand.NewChaCha8([32]byte{'p', 'q', 't'})
	_, _ = r.Read(b) // ChaCha8 does not fail
	return b
}()

// origin is the service behind the tunnel, one listener per route. Every
// connection it holds is tracked so that close can end it.
type origin struct {
	lns       map[string]net.Listener
	active    map[string]*atomic.Int64
	sinkBytes atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func startOrigin() (*origin, error) {
	return startOriginOn(func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") })
}

// startOriginOn is startOrigin with listeners that listen returns.
func startOriginOn(listen func() (net.Listener, error)) (*origin, error) {
	o := &origin{lns: map[string]net.Listener{}, active: map[string]*atomic.Int64{}, conns: map[net.Conn]struct{}{}}
	handlers := map[string]func(*net.TCPConn){routeEcho: o.handleEcho, routeSink: o.handleSink, routeSource: o.handleSource}
	for _, r := range routeNames {
		ln, err := listen()
		if err != nil {
			o.close()
			return nil, fmt.Errorf("origin %s: %w", r, err)
		}
		o.lns[r] = ln
		o.active[r] = new(atomic.Int64)
	}
	for _, r := range routeNames {
		o.wg.Add(1)
		go o.routineServe(r, o.lns[r], handlers[r])
	}
	return o, nil
}

func (o *origin) addr(route string) string { return o.lns[route].Addr().String() }

func (o *origin) routineServe(route string, ln net.Listener, handle func(*net.TCPConn)) {
	defer o.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // EMFILE and the like: the client sees a failure
		}
		if !o.track(c) {
			_ = c.Close() // shutting down
			return
		}
		o.active[route].Add(1)
		o.wg.Add(1)
		go func() {
			defer o.wg.Done()
			defer o.active[route].Add(-1)
			defer o.untrack(c)
			handle(c.(*net.TCPConn))
		}()
	}
}

func (o *origin) track(c net.Conn) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	o.conns[c] = struct{}{}
	return true
}

func (o *origin) untrack(c net.Conn) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.conns, c)
}

// close stops the listeners, ends every connection and waits for the handlers.
func (o *origin) close() {
	o.mu.Lock()
	o.closed = true
	for _, ln := range o.lns {
		_ = ln.Close() // stopping
	}
	for c := range o.conns {
		_ = c.Close()
	}
	o.mu.Unlock()
	o.wg.Wait()
}

// waitIdle polls until route has no connection open, so that one
// measurement's teardown does not overlap the next.
func (o *origin) waitIdle(ctx context.Context, route string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for o.active[route].Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("origin %s: %d connections still open after %s", route, o.active[route].Load(), timeout)
		case <-tick.C:
		}
	}
	return nil
}

func (o *origin) handleEcho(c *net.TCPConn) {
	defer c.Close()
	var buf [512]byte
	// The wrappers keep io.CopyBuffer on the small buffer rather than splice.
	_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf[:]) // a failure shows as a short echo
	_ = c.CloseWrite()
}

func (o *origin) handleSink(c *net.TCPConn) {
	defer c.Close()
	buf := make([]byte, chunkSize)
	for {
		n, err := c.Read(buf)
		o.sinkBytes.Add(int64(n))
		if err != nil {
			return // EOF after the client's half-close, or the client went away
		}
	}
}

// handleSource writes until the client half-closes, then closes, which the
// client reads as EOF after the bytes still in flight.
func (o *origin) handleSource(c *net.TCPConn) {
	defer c.Close()
	var stop atomic.Bool
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		_, _ = io.Copy(io.Discard, c) // ends on the client's FIN or a failure
		stop.Store(true)
	}()
	for !stop.Load() {
		if _, err := c.Write(payload); err != nil {
			break
		}
	}
	_ = c.CloseWrite()
	<-readDone
}

// helperFlag makes the harness binary serve echo as the idle-connection
// helper instead of benchmarking.
const helperFlag = "-serve-echo-helper"

// helperReady prefixes the line on which the helper announces its address.
const helperReady = "echo helper listening on "

// serveEchoHelper serves echo on a loopback port until stdin closes or the
// process is killed: the origin of the idle connections, in a process of
// its own so that no process needs two files per connection.
func serveEchoHelper(stdin io.Reader, stdout io.Writer) int {
	o := &origin{lns: map[string]net.Listener{}, active: map[string]*atomic.Int64{}, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(stdout, "echo helper:", err)
		return 1
	}
	o.lns[routeIdle], o.active[routeIdle] = ln, new(atomic.Int64)
	o.wg.Add(1)
	go o.routineServe(routeIdle, ln, o.handleEcho)
	fmt.Fprintln(stdout, helperReady+ln.Addr().String())
	_, _ = io.Copy(io.Discard, stdin) // returns when the harness closes stdin or exits
	o.close()
	return 0
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// relayFlag makes the harness binary a plain TCP relay: two of them, one
// in each namespace, are the WAN bench's "2 relays" path, the hops a
// dial and a listen side add without their encryption and multiplexing.
// The latency that path adds is the floor of any tunnel made of two
// processes; what tcp and quic add beyond it is pqtunnel's own.
const relayFlag = "-serve-relay-helper"

// relayReady prefixes the line on which the relay says where it listens.
const relayReady = "relay listening on "

// serveRelay accepts on listen and carries each connection to target,
// both ways, each half-closed when its reader sees EOF, until stdin
// closes or the process is killed.
func serveRelay(listen, target string, stdin io.Reader, stdout io.Writer) int {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintln(stdout, "relay:", err)
		return 1
	}
	fmt.Fprintln(stdout, relayReady+ln.Addr().String())
	go func() {
		_, _ = io.Copy(io.Discard, stdin) // returns when the harness closes stdin or exits
		_ = ln.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return 0
			}
			fmt.Fprintln(stdout, "relay:", err)
			return 1
		}
		wg.Go(func() { relayConn(c.(*net.TCPConn), target) })
	}
}

func relayConn(c *net.TCPConn, target string) {
	defer c.Close()
	d, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		return // the client sees its connection closed
	}
	o := d.(*net.TCPConn)
	defer o.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(o, c)
		_ = o.CloseWrite()
	}()
	_, _ = io.Copy(c, o)
	_ = c.CloseWrite()
	<-done
}

// startRelay starts this program again as a relay from listen to target
// inside the namespace netns, and returns once it listens.
func startRelay(ctx context.Context, sup *supervisor, name, netns, listen, target string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	c, err := sup.start(name, "ip", []string{"netns", "exec", netns, exe, relayFlag, listen, target}, nil)
	if err != nil {
		return nil, err
	}
	if _, err := awaitReadyLine(ctx, sup, c, relayReady); err != nil {
		return nil, err
	}
	return c, nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// relayFlag makes the harness binary a plain TCP relay: two of them, one
// in each namespace, are the WAN bench's "2 relays" path, the hops a
// dial and a listen side add without their encryption and multiplexing;
// two on loopback are the Redis loads' "relays" path. What that path
// adds (latency, CPU per request) is the floor of any tunnel made of two
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
// inside the namespace netns ("": this one), and returns once it listens,
// with the address it listens on.
func startRelay(ctx context.Context, sup *supervisor, name, netns, listen, target string) (*child, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", fmt.Errorf("relay: %w", err)
	}
	bin, args := exe, []string{relayFlag, listen, target}
	if netns != "" {
		bin, args = "ip", append([]string{"netns", "exec", netns, exe}, args...)
	}
	c, err := sup.start(name, bin, args, nil)
	if err != nil {
		return nil, "", err
	}
	addr, err := awaitReadyLine(ctx, sup, c, relayReady)
	if err != nil {
		return nil, "", err
	}
	return c, addr, nil
}

// startRelayPath starts the relays path to target on loopback: a relay
// that a client connects to, carrying each connection to a second relay,
// which carries it to target, as a dial and a listen side would.
func startRelayPath(ctx context.Context, sup *supervisor, route, target string) (*path, error) {
	listen, inListen, err := startRelay(ctx, sup, "relay-listen", "", "127.0.0.1:0", target)
	if err != nil {
		return nil, err
	}
	dial, inDial, err := startRelay(ctx, sup, "relay-dial", "", "127.0.0.1:0", inListen)
	if err != nil {
		return nil, err
	}
	return &path{mode: modeRelays, routes: map[string]string{route: inDial}, dial: dial, listen: listen}, nil
}

// modeHAProxy is two haproxy processes relaying plain TCP as the relays
// path's Go relays do: the same floor, from an event-driven relay in C
// that reads and writes many connections on one thread.
const modeHAProxy = "haproxy_relays"

// haproxyConfig is one haproxy relaying TCP from listen to target, on one
// thread, without logging.
func haproxyConfig(listen, target string) string {
	return fmt.Sprintf(`global
  nbthread 1
defaults
  mode tcp
  timeout connect 10s
  timeout client 5m
  timeout server 5m
frontend in
  bind %s
  default_backend out
backend out
  server target %s
`, listen, target)
}

// haproxyPath is where haproxy is installed: in PATH or in /usr/sbin,
// where Debian puts it; "" when it is not.
func haproxyPath() string {
	if bin, err := exec.LookPath("haproxy"); err == nil {
		return bin
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy"
	}
	return ""
}

// haproxyVersion is the first line of haproxy -v.
func haproxyVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "-v").Output()
	if err != nil {
		return "haproxy -v: " + err.Error()
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// startHAProxyPath starts the haproxy relays path to target, as
// startRelayPath does with the Go relay, writing its configuration under
// dir, and the version it runs. It returns nil and no error when haproxy
// is not installed.
func startHAProxyPath(ctx context.Context, sup *supervisor, dir, route, target string) (*path, string, error) {
	bin := haproxyPath()
	if bin == "" {
		return nil, "", nil
	}
	start := func(name, target string) (*child, string, error) {
		var lastErr error
		for range 3 {
			p, err := testutil.FreePort()
			if err != nil {
				return nil, "", err
			}
			listen := testutil.Loopback(p)
			cfg := filepath.Join(dir, name+".cfg")
			if err := os.WriteFile(cfg, []byte(haproxyConfig(listen, target)), 0o644); err != nil {
				return nil, "", fmt.Errorf("haproxy: %w", err)
			}
			c, err := sup.start(name, bin, []string{"-db", "-f", cfg}, nil)
			if err != nil {
				return nil, "", err
			}
			if lastErr = waitAccepting(ctx, c, listen, 10*time.Second); lastErr == nil {
				sup.watch(c)
				return c, listen, nil
			}
			sup.stop(c)
		}
		return nil, "", fmt.Errorf("start haproxy: %w", lastErr)
	}
	listen, inListen, err := start("haproxy-listen", target)
	if err != nil {
		return nil, "", err
	}
	dial, inDial, err := start("haproxy-dial", inListen)
	if err != nil {
		return nil, "", err
	}
	return &path{mode: modeHAProxy, routes: map[string]string{route: inDial}, dial: dial, listen: listen}, haproxyVersion(ctx, bin), nil
}

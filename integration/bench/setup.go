package main

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// Mode names: direct is the client talking to the origin itself.
const (
	modeDirect    = "direct"
	modeTCP       = "tcp"
	modeQUIC      = "quic"
	modeTCP4Conn  = "tcp_4conn"
	modeQUIC4Conn = "quic_4conn"
	// modeRelays is two plain TCP relays: the hops of a tunnel without its
	// encryption and multiplexing (see relayFlag), one in each namespace
	// on the WAN bed, on loopback for the Redis loads.
	modeRelays = "relays"
)

// path is one way from a client to the origin: direct, or through a dial
// and a listen side.
type path struct {
	mode   string
	routes map[string]string // route name → address a client connects to
	dial   *child            // nil for direct
	listen *child
}

// sides are the processes of a tunnelled path, for CPU and memory figures.
func (p *path) sides() []*child {
	if p.dial == nil {
		return nil
	}
	return []*child{p.dial, p.listen}
}

// topology is everything the run measures through.
type topology struct {
	paths map[string]*path
	// handshake is a listen side serving both transports with PQT_PQ=prefer
	// and every group, so that each group can be probed alone.
	handshake     *child
	handshakeAddr string
	listenPin     string
	dialIdentity  string
	maxStreams    int
}

// handshakeGroups is PQT_GROUPS of the handshake listen side.
const handshakeGroups = "X25519MLKEM768,SecP256r1MLKEM768,SecP384r1MLKEM1024,X25519"

// routeList is addrs as PQT_TARGET or PQT_FORWARD, in route name order.
func routeList(addrs map[string]string) string {
	var parts []string
	for _, r := range slices.Sorted(maps.Keys(addrs)) {
		parts = append(parts, r+"="+addrs[r])
	}
	return strings.Join(parts, ",")
}

// startSide starts one pqtunnel process with the environment that build
// returns, which picks fresh loopback ports, and waits until it is ready
// with tunnels tunnel connections up. It tries again with new ports when
// another process took one meanwhile.
func startSide(ctx context.Context, sup *supervisor, bin, name string, tunnels int, build func() (map[string]string, error)) (*child, map[string]string, error) {
	var lastErr error
	for range 3 {
		env, err := build()
		if err != nil {
			return nil, nil, err
		}
		mport, err := testutil.FreePort()
		if err != nil {
			return nil, nil, err
		}
		env["PQT_METRICS"] = testutil.Loopback(mport)
		c, err := sup.start(name, bin, nil, env)
		if err != nil {
			return nil, nil, err
		}
		lastErr = waitReady(ctx, c, tunnels, 20*time.Second)
		if lastErr == nil {
			sup.watch(c)
			return c, env, nil
		}
		if !c.exited() || !strings.Contains(c.out.String(), "address already in use") {
			return nil, nil, lastErr
		}
	}
	return nil, nil, lastErr
}

// startTopology starts two listen sides (TCP, QUIC), a dial side of one
// tunnel connection and one of four for each, and the handshake listen side.
// Besides the origin's routes and the idle route, every side carries the
// routes of extra (route name → origin address), such as a Redis server.
func startTopology(ctx context.Context, sup *supervisor, bin, dir string, org *origin, idleOrigin string, extra map[string]string, maxStreams int) (*topology, error) {
	listenID, dialID := filepath.Join(dir, "listen.id"), filepath.Join(dir, "dial.id")
	listenPin, err := testutil.Keygen(ctx, bin, listenID)
	if err != nil {
		return nil, err
	}
	dialPin, err := testutil.Keygen(ctx, bin, dialID)
	if err != nil {
		return nil, err
	}
	targets := maps.Clone(extra)
	if targets == nil {
		targets = map[string]string{}
	}
	targets[routeIdle] = idleOrigin
	for _, r := range routeNames {
		targets[r] = org.addr(r)
	}
	common := func(mode, transport string) map[string]string {
		env := map[string]string{
			"PQT_MODE":        mode,
			"PQT_TRANSPORT":   transport,
			"PQT_LOG_LEVEL":   "warn",
			"PQT_MAX_STREAMS": strconv.Itoa(maxStreams),
		}
		if mode == "listen" {
			env["PQT_IDENTITY"], env["PQT_PEERS"] = listenID, dialPin
		} else {
			env["PQT_IDENTITY"], env["PQT_PEERS"] = dialID, listenPin
		}
		return env
	}
	top := &topology{
		paths:        map[string]*path{modeDirect: {mode: modeDirect, routes: targets}},
		listenPin:    listenPin,
		dialIdentity: dialID,
		maxStreams:   maxStreams,
	}
	tunnelAddr := map[string]string{}
	listens := map[string]*child{}
	for _, tr := range []string{modeTCP, modeQUIC} {
		c, env, err := startSide(ctx, sup, bin, "listen-"+tr, 0, func() (map[string]string, error) {
			p, err := testutil.FreePort()
			if err != nil {
				return nil, err
			}
			env := common("listen", tr)
			env["PQT_TUNNEL"] = testutil.Loopback(p)
			env["PQT_TARGET"] = routeList(targets)
			return env, nil
		})
		if err != nil {
			return nil, err
		}
		listens[tr], tunnelAddr[tr] = c, env["PQT_TUNNEL"]
	}
	hs, hsEnv, err := startSide(ctx, sup, bin, "listen-handshake", 0, func() (map[string]string, error) {
		p, err := testutil.FreePort()
		if err != nil {
			return nil, err
		}
		env := common("listen", "auto")
		env["PQT_TUNNEL"] = testutil.Loopback(p)
		env["PQT_TARGET"] = routeList(targets)
		env["PQT_PQ"] = "prefer"
		env["PQT_GROUPS"] = handshakeGroups
		return env, nil
	})
	if err != nil {
		return nil, err
	}
	top.handshake, top.handshakeAddr = hs, hsEnv["PQT_TUNNEL"]
	for _, d := range []struct {
		mode, transport string
		conns           int
	}{{modeTCP, modeTCP, 1}, {modeQUIC, modeQUIC, 1}, {modeTCP4Conn, modeTCP, 4}, {modeQUIC4Conn, modeQUIC, 4}} {
		routes := map[string]string{}
		c, _, err := startSide(ctx, sup, bin, "dial-"+d.mode, d.conns, func() (map[string]string, error) {
			for r := range targets {
				p, err := testutil.FreePort()
				if err != nil {
					return nil, err
				}
				routes[r] = testutil.Loopback(p)
			}
			env := common("dial", d.transport)
			env["PQT_TUNNEL"] = tunnelAddr[d.transport]
			env["PQT_FORWARD"] = routeList(routes)
			env["PQT_CONNECTIONS"] = strconv.Itoa(d.conns)
			return env, nil
		})
		if err != nil {
			return nil, err
		}
		top.paths[d.mode] = &path{mode: d.mode, routes: routes, dial: c, listen: listens[d.transport]}
	}
	return top, nil
}

// describe lists the processes for the result's metadata.
func (t *topology) describe() []string {
	var out []string
	for _, m := range []string{modeTCP, modeQUIC, modeTCP4Conn, modeQUIC4Conn} {
		p := t.paths[m]
		out = append(out, fmt.Sprintf("%s: dial pid %d → listen pid %d", m, p.dial.pid(), p.listen.pid()))
	}
	for _, m := range []string{modeRelays, modeHAProxy} {
		if p := t.paths[m]; p != nil {
			out = append(out, fmt.Sprintf("%s: relay pid %d → relay pid %d", m, p.dial.pid(), p.listen.pid()))
		}
	}
	out = append(out, fmt.Sprintf("handshake: listen pid %d on %s (PQT_TRANSPORT=auto PQT_PQ=prefer PQT_GROUPS=%s)", t.handshake.pid(), t.handshakeAddr, handshakeGroups))
	return out
}

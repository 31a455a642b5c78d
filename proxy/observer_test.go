package proxy

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	pinnedtest "github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/tlsroute"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
	"github.com/pqtunnel/pqtunnel/wire"
)

// recordingObserver keeps the events it is told of, one string each.
type recordingObserver struct {
	mu     sync.Mutex
	events []string
}

func (r *recordingObserver) add(ev string) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

func (r *recordingObserver) count(ev string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e == ev {
			n++
		}
	}
	return n
}

func (r *recordingObserver) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *recordingObserver) TunnelUp(transport.Info)               { r.add("tunnel up") }
func (r *recordingObserver) TunnelDown(_ transport.Info, _ string) { r.add("tunnel down") }
func (r *recordingObserver) HandshakeFailed(reason string)         { r.add("handshake failed " + reason) }
func (r *recordingObserver) TunnelRevoked(peer string)             { r.add("revoked " + peer) }
func (r *recordingObserver) Reconnected()                          { r.add("reconnected") }
func (r *recordingObserver) ExtraTunnelOpened()                    { r.add("extra tunnel") }
func (r *recordingObserver) TunnelAddressesChanged(added, removed int) {
	r.add(fmt.Sprintf("addresses +%d -%d", added, removed))
}
func (r *recordingObserver) TransportMoved(from, to, reason string) {
	r.add("moved " + from + " " + to + " " + reason)
}
func (r *recordingObserver) StreamOpened(route, dir string) { r.add("opened " + route + " " + dir) }
func (r *recordingObserver) StreamClosed(route, dir string) { r.add("closed " + route + " " + dir) }
func (r *recordingObserver) StreamFailed(route, reason string) {
	r.add("failed " + route + " " + reason)
}
func (r *recordingObserver) StreamNotAllowed(route, peer string) {
	r.add("not allowed " + route)
}
func (r *recordingObserver) StreamBytes(route string, up, down int64) {
	if up > 0 && down > 0 {
		r.add("bytes " + route)
	}
}
func (r *recordingObserver) OriginDialed(route string, _ time.Duration) { r.add("dialed " + route) }
func (r *recordingObserver) TLSHandshake(route, side string, _ tlsroute.Info, _ string) {
	r.add("tls " + route + " " + side)
}
func (r *recordingObserver) TLSRefused(route, side, reason string) {
	r.add("tls refused " + route + " " + side + " " + reason)
}

// waitEvent waits until obs was told of ev at least once.
func waitEvent(t *testing.T, obs *recordingObserver, ev string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); obs.count(ev) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q event; saw %q", ev, obs.all())
		}
	}
}

// The engine tells Config.Observer what its metrics see: tunnels up and
// down, and each stream opened, carried and closed.
func TestObserverSeesTunnelsAndStreams(t *testing.T) {
	tr := memtransport.New()
	echo := testutil.EchoOrigin(t)
	listenStore, dialStore := pinnedtest.Stores(t, wire.ALPN)
	var listenObs, dialObs recordingObserver
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tr,
		Target: []Route{{Name: "echo", Addr: echo}}, TLS: listenStore, ReadyTargetDown: -1, Observer: &listenObs,
	})
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: tr, Connections: 1,
		Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}}, TLS: dialStore, Observer: &dialObs,
	})
	waitTunnels(t, dial)
	if err := echoThrough(dial.ForwardAddrs()[0].String(), []byte("observed")); err != nil {
		t.Fatal(err)
	}
	for _, ev := range []string{"tunnel up", "opened echo out", "bytes echo", "closed echo out"} {
		waitEvent(t, &dialObs, ev)
	}
	for _, ev := range []string{"tunnel up", "opened echo in", "dialed echo", "bytes echo", "closed echo in"} {
		waitEvent(t, &listenObs, ev)
	}
	// The observer and the metrics are told of the same events.
	if got := counterValue(t, dial.metrics, "pqtunnel_streams_opened_total", "route", "echo", "direction", "out"); got != 1 {
		t.Errorf("pqtunnel_streams_opened_total{route=echo,direction=out} = %v, want 1", got)
	}
}

// A peer the TLS policy refuses inside the TLS stack is counted once, by
// its reason, in an engine whose caller wired nothing to the policy: the
// engine adds its own metrics to the store's refusals.
func TestPolicyRefusalCountedWithoutWiring(t *testing.T) {
	tr := memtransport.New()
	listenStore, _ := pinnedtest.Stores(t, wire.ALPN)
	stranger, err := pinned.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	strangerStore, err := hybridtls.NewStore(hybridtls.Policy{Mode: hybridtls.Strict, Groups: hybridtls.DefaultGroups, ALPN: wire.ALPN},
		&pinned.Authenticator{Identity: stranger, Peers: []pinned.Pin{listenStore.Authenticator().(*pinned.Authenticator).Identity.Pin}})
	if err != nil {
		t.Fatal(err)
	}
	var obs recordingObserver
	listen := runEngine(t, Config{Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tr, TLS: listenStore, Observer: &obs})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := tr.Dial(ctx, listen.TunnelAddr().String(), &transport.Config{
		TLS: strangerStore.ClientConfig(), Authenticate: transporttest.StoreAuth(strangerStore), HandshakeTimeout: 5 * time.Second,
	})
	if err == nil {
		_ = s.Close()
		t.Fatal("a peer whose pin the listen side lacks connected")
	}
	waitEvent(t, &obs, "handshake failed peer_not_allowed")
	if got := counterValue(t, listen.metrics, "pqtunnel_handshake_failures_total", "reason", "peer_not_allowed"); got != 1 {
		t.Errorf("pqtunnel_handshake_failures_total{reason=peer_not_allowed} = %v after one refused peer, want 1", got)
	}
	if n := obs.count("handshake failed peer_not_allowed"); n != 1 {
		t.Errorf("observer told of %d refusals for one refused peer, want 1: %q", n, obs.all())
	}
}

// counterValue is the value of the counter series of name whose labels
// include labels (name, value pairs); zero when there is none.
func counterValue(t *testing.T, m *Metrics, name string, labels ...string) float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, s := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range s.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			return s.GetCounter().GetValue()
		}
	}
	return 0
}

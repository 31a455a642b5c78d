package quic_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// dropWrites is a UDP socket whose sends vanish once drop is set: a path
// dead from this side to the peer while the peer's packets still arrive.
type dropWrites struct {
	net.PacketConn
	drop *atomic.Bool
}

func (d dropWrites) WriteTo(p []byte, addr net.Addr) (int, error) {
	if d.drop.Load() {
		return len(p), nil
	}
	return d.PacketConn.WriteTo(p, addr)
}

// With the dialler's packets to the listener lost and the listener's still
// arriving, both sessions end within KeepAliveTimeout with keepalive_lost:
// the dialler although it keeps hearing the listener's keep-alives.
func TestKeepAliveProbesEndAPathDeadOneWay(t *testing.T) {
	const timeout = 1200 * time.Millisecond
	cc, sc := transporttest.Configs(t)
	var drop atomic.Bool
	cc.WrapPacketConn = func(pc net.PacketConn) net.PacketConn { return dropWrites{pc, &drop} }
	for _, c := range []*transport.Config{cc, sc} {
		c.KeepAlive = 200 * time.Millisecond
		c.KeepAliveTimeout = timeout
		c.IdleTimeout = 30 * time.Second // only the probes can end it soon
	}
	client, server := transporttest.SessionPair(t, quic.Transport{}, cc, sc)
	// Healthy, the probes keep the sessions up for several timeouts.
	select {
	case <-client.Done():
		t.Fatal("client session ended on a live path")
	case <-server.Done():
		t.Fatal("server session ended on a live path")
	case <-time.After(3 * timeout):
	}
	drop.Store(true)
	start := time.Now()
	for _, s := range []struct {
		name string
		s    transport.Session
	}{{"client", client}, {"server", server}} {
		ctx, cancel := context.WithTimeout(context.Background(), 4*timeout)
		_, err := s.s.AcceptStream(ctx)
		cancel()
		took := time.Since(start)
		if r := transport.ReasonOf(err); r != transport.CloseKeepAliveLost {
			t.Errorf("%s: AcceptStream after %s: %v (reason %q), want keepalive_lost", s.name, took, err, r)
		}
		if took > timeout+timeout/2 {
			t.Errorf("%s: session ended %s after the path died, want within about %s", s.name, took, timeout)
		}
	}
}

// A peer that closes says so: the other side's reason is peer_closed, and
// the side that closed reads local_close.
func TestCloseReasonOfAPeerClose(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	client, server := transporttest.SessionPair(t, quic.Transport{}, cc, sc)
	_ = client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := server.AcceptStream(ctx); transport.ReasonOf(err) != transport.ClosePeer {
		t.Errorf("server AcceptStream after the client closed: %v, want peer_closed", err)
	}
	if _, err := client.AcceptStream(ctx); transport.ReasonOf(err) != transport.CloseLocal {
		t.Errorf("client AcceptStream after its own Close: %v, want local_close", err)
	}
}

// The keep-alive probes carry each side's packet counts to the other, and
// a burst of probes measures the path's round-trip loss: none on loopback,
// all of it once the dialler's packets vanish.
func TestProbesReportPeerCountsAndMeasureLoss(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	var drop atomic.Bool
	cc.WrapPacketConn = func(pc net.PacketConn) net.PacketConn { return dropWrites{pc, &drop} }
	for _, c := range []*transport.Config{cc, sc} {
		c.KeepAlive = 100 * time.Millisecond
		c.IdleTimeout = 30 * time.Second
		c.KeepAliveTimeout = 10 * time.Second
	}
	client, server := transporttest.SessionPair(t, quic.Transport{}, cc, sc)
	deadline := time.Now().Add(5 * time.Second)
	for {
		cs, _ := transport.SessionStats(client)
		ss, _ := transport.SessionStats(server)
		if cs.PeerPacketsSent > 0 && ss.PeerPacketsSent > 0 {
			if cs.PeerPacketsSent > ss.PacketsSent || ss.PeerPacketsSent > cs.PacketsSent {
				t.Errorf("peer counts %d and %d exceed what the peers sent, %d and %d", cs.PeerPacketsSent, ss.PeerPacketsSent, ss.PacketsSent, cs.PacketsSent)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no peer counts after 5 s: client %+v, server %+v", cs, ss)
		}
		time.Sleep(20 * time.Millisecond)
	}
	prober, ok := client.(interface {
		ProbeLoss(ctx context.Context, n int, every time.Duration) (int, int, error)
	})
	if !ok {
		t.Fatal("a QUIC session cannot probe for loss")
	}
	ctx := transporttest.Ctx(t)
	if sent, answered, err := prober.ProbeLoss(ctx, 200, time.Millisecond); err != nil || sent != 200 || answered != 200 {
		t.Errorf("loopback loss probe: %d sent, %d answered, %v; want all 200", sent, answered, err)
	}
	drop.Store(true)
	if sent, answered, err := prober.ProbeLoss(ctx, 50, time.Millisecond); err != nil || sent != 50 || answered != 0 {
		t.Errorf("loss probe of a dead path: %d sent, %d answered, %v; want 50, 0", sent, answered, err)
	}
}

package check_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pqtunnel/pqtunnel/check"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/proxy"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// blackholeUDP is a UDP socket that reads every datagram and answers none,
// as a peer behind a firewall that drops the server's replies looks.
func blackholeUDP(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		_ = pc.Close()
		<-done
	})
	return pc.LocalAddr().String()
}

func probeConfig(t *testing.T, timeout time.Duration) check.Config {
	dialStore, _ := pinned.Stores(t, wire.ALPN)
	return check.Config{TLS: dialStore, Mux: transport.Config{HandshakeTimeout: timeout}}
}

// The first flight is what the client sends at once; quic-go resends it
// every probe timeout (200 ms, then 400 ms, …) while the server is silent,
// and those copies are not part of it.
func TestFirstFlightCountsNoRetransmission(t *testing.T) {
	addr := blackholeUDP(t)
	for _, groups := range [][]tls.CurveID{hybridtls.DefaultGroups, {tls.SecP384r1MLKEM1024}} {
		t.Run(hybridtls.GroupNames(groups), func(t *testing.T) {
			timeout := 1500 * time.Millisecond // room for three retransmissions
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			p := check.ProbeTunnel(ctx, probeConfig(t, timeout), addr, quic.Transport{}, hybridtls.Strict, groups)
			if p.Err == nil {
				t.Fatal("a handshake with a silent peer succeeded")
			}
			if p.FirstFlightPackets != 2 || p.FirstFlight != 2*1280 {
				t.Errorf("first flight %d B in %d datagrams, want 2560 B in 2 (every hybrid ClientHello fits in two padded datagrams)", p.FirstFlight, p.FirstFlightPackets)
			}
			if d := p.Diagnosis(); d != check.DiagnosisNoUDPAnswer {
				t.Errorf("diagnosis %d for %v, want no UDP answer", d, p.Err)
			}
		})
	}
}

// A closed UDP port answers with ICMP port unreachable: the QUIC probe
// says so at once instead of waiting for its handshake timeout.
func TestProbeFailsFastOnPortUnreachable(t *testing.T) {
	addr := closedPort(t, "udp")
	timeout := 10 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	p := check.ProbeTunnel(ctx, probeConfig(t, timeout), addr, quic.Transport{}, hybridtls.Strict, hybridtls.DefaultGroups)
	took := time.Since(start)
	if !errors.Is(p.Err, check.ErrPortUnreachable) {
		t.Fatalf("probe error %v, want ErrPortUnreachable", p.Err)
	}
	if took > 3*time.Second {
		t.Errorf("the probe took %s to notice a closed port, want well under its %s timeout", took.Round(time.Millisecond), timeout)
	}
	if d := p.Diagnosis(); d != check.DiagnosisPortUnreachable || !d.Unreachable() {
		t.Errorf("diagnosis %d, want port unreachable, which is unreachable", d)
	}
	// Over TCP a closed port is a refused connection, fast by itself.
	p = check.ProbeTunnel(ctx, probeConfig(t, timeout), closedPort(t, "tcp"), tlsmux.Transport{}, hybridtls.Strict, hybridtls.DefaultGroups)
	if d := p.Diagnosis(); d != check.DiagnosisRefused {
		t.Errorf("tcp probe of a closed port: diagnosis %d for %v, want refused", d, p.Err)
	}
}

// closedPort returns a loopback address where nothing listens on network
// ("tcp" or "udp").
func closedPort(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close() // closed before the address is used
		return pc.LocalAddr().String()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// check asks the peer about each forward route: one it delivers, one it
// lacks (the answer lists what it has), and one whose @ list does not name
// the peer, which is not asked at all. The peer dials nothing for a query.
func TestProbeRoutesAsksThePeer(t *testing.T) {
	tr := memtransport.New()
	dialStore, listenStore := pinned.Stores(t, wire.ALPN)
	listen := runListen(t, proxy.Config{
		Transport: tr, Target: []proxy.Route{{Name: "echo", Addr: closedPort(t, "tcp")}}, TLS: listenStore,
		SettingName: func(field string) string { return map[string]string{"Target": "PQT_TARGET"}[field] },
	})
	cfg := check.Config{
		TLS: dialStore, Mux: transport.Config{HandshakeTimeout: 10 * time.Second},
		Forward: []check.Route{{Name: "echo"}, {Name: "pg"}, {Name: "web", Allow: []string{"someone-else"}}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := check.ProbeRoutes(ctx, cfg, listen.TunnelAddr().String(), tr, hybridtls.Strict, hybridtls.DefaultGroups)
	if p.Err != nil {
		t.Fatal(p.Err)
	}
	if len(p.Routes) != 3 {
		t.Fatalf("answers %+v, want 3", p.Routes)
	}
	echo, pg, web := p.Routes[0], p.Routes[1], p.Routes[2]
	if !echo.Known || echo.Err != nil || echo.Route != "echo" {
		t.Errorf("echo: %+v, want known", echo)
	}
	if pg.Known || pg.Err != nil || !strings.Contains(pg.Message, `route "pg" is not in the peer's PQT_TARGET (it has: echo)`) {
		t.Errorf("pg: %+v, want unknown with the peer's routes", pg)
	}
	if !web.NotCarried || web.Known {
		t.Errorf("web: %+v, want not carried to this peer", web)
	}
	// Target probes are off (ReadyTargetDown), so any dial was the query's.
	for _, r := range listen.Status().Routes {
		if r.LastDial != nil {
			t.Errorf("the route query made the peer dial its origin for route %s", r.Name)
		}
	}
}

package proxy

import (
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/wire"
)

// TestEnginesShareOneMetrics runs both ends of a QUIC tunnel in one process
// on one Metrics: both must start, and the registry must report each end's
// tunnel as its own series.
func TestEnginesShareOneMetrics(t *testing.T) {
	m := NewMetrics()
	listenStore, dialStore := pinned.Stores(t, wire.ALPN)
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: quic.Transport{},
		TLS: listenStore, Metrics: m,
	})
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: quic.Transport{},
		Connections: 1, TLS: dialStore, Metrics: m,
	})
	waitTunnels(t, listen)
	waitTunnels(t, dial)

	families, err := m.reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	labels := map[string]bool{}
	for _, f := range families {
		if f.GetName() != "pqtunnel_quic_rtt_seconds" {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "tunnel" {
					labels[l.GetValue()] = true
				}
			}
		}
	}
	if len(labels) != 2 {
		t.Errorf("pqtunnel_quic_rtt_seconds has tunnels %v, want one series per engine (2)", labels)
	}
}

package proxy

import (
	"errors"
	"net"
	"syscall"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/defaults"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/wire"
)

// A zero Config gets package defaults, the same values the binary's
// environment defaults to; negative limits mean no bound.
func TestConfigZeroValueIsTheDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.Connections != defaults.Connections || c.MaxConnections != defaults.MaxConnections ||
		c.MaxTotalStreams != defaults.MaxTotalStreams || c.DialTimeout != defaults.DialTimeout || c.DrainTimeout != defaults.DrainTimeout {
		t.Errorf("zero Config became connections %d, max connections %d, max total streams %d, dial timeout %s, drain timeout %s; want package defaults",
			c.Connections, c.MaxConnections, c.MaxTotalStreams, c.DialTimeout, c.DrainTimeout)
	}
	unbounded := Config{MaxConnections: -1, MaxTotalStreams: -1}.withDefaults()
	if unbounded.MaxConnections != -1 || unbounded.MaxTotalStreams != -1 {
		t.Errorf("negative limits became %d and %d, want them kept (no bound)", unbounded.MaxConnections, unbounded.MaxTotalStreams)
	}
}

// New says which Config field is at fault in a typed error, without
// naming any environment variable: that is the caller's vocabulary.
func TestNewReportsTheFieldAtFault(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	a, _ := pinned.Stores(t, wire.ALPN)
	tests := []struct {
		name  string
		cfg   Config
		field string
	}{
		{"forward address in use", Config{Mode: ModeDial, Tunnel: []string{"127.0.0.1:1"}, Transport: tlsmux.Transport{}, Forward: []Route{{Name: "web", Addr: busy.Addr().String()}}, TLS: a}, "Forward"},
		{"tunnel address in use", Config{Mode: ModeListen, Tunnel: []string{busy.Addr().String()}, Transport: tlsmux.Transport{}, TLS: a}, "Tunnel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := New(tt.cfg)
			if err == nil {
				e.Close()
				t.Fatal("New succeeded")
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tt.field {
				t.Fatalf("New: %v, want a ConfigError for %s", err, tt.field)
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("New: %v does not wrap EADDRINUSE", err)
			}
		})
	}
}

package transport

import (
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/defaults"
)

// A zero Config gets package defaults, the same values the binary's
// environment defaults to.
func TestConfigZeroValueIsTheDefaults(t *testing.T) {
	var c Config
	if c.handshakeTimeout() != defaults.HandshakeTimeout || c.keepAlive() != defaults.KeepAlive ||
		c.idleTimeout() != defaults.IdleTimeout || c.maxStreams() != defaults.MaxStreams ||
		c.maxHandshakes() != defaults.MaxHandshakes || c.streamWindow() != defaults.StreamWindow {
		t.Errorf("zero Config: handshake %s keep-alive %s idle %s streams %d handshakes %d window %d; want package defaults",
			c.handshakeTimeout(), c.keepAlive(), c.idleTimeout(), c.maxStreams(), c.maxHandshakes(), c.streamWindow())
	}
	// A keep-alive set longer than the default idle timeout leaves room for
	// four of them before the peer counts as gone.
	c.KeepAlive = 5 * time.Second
	if got := c.idleTimeout(); got != 20*time.Second {
		t.Errorf("KeepAlive 5s: idle timeout %s, want 20s", got)
	}
}

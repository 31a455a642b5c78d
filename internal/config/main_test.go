package config

import (
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
)

// PQT_TRANSPORT names what the program registered; the tests register what
// cmd/pqtunnel does.
func init() {
	transport.Register(quic.Transport{})
	transport.Register(tlsmux.Transport{})
	transport.Register(transport.Fallback(quic.Transport{}, tlsmux.Transport{}))
}

package main

import (
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
)

// basicTransports are what PQT_TRANSPORT can name besides auto, in the
// order check probes them; auto is the first falling back to the second.
// A new transport is one package under transport/ and one entry here.
var basicTransports = []transport.Transport{quic.Transport{}, tlsmux.Transport{}}

func init() {
	for _, t := range basicTransports {
		transport.Register(t)
	}
	transport.Register(transport.Fallback(basicTransports[0], basicTransports[1]))
}

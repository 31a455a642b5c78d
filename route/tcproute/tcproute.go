// Package tcproute is the TCP route kind (wire.KindTCP): a byte stream
// with half-close between a client of a forward route and the origin of a
// target route, each a TCP or Unix socket, or a TLS connection over one,
// which the engine sets up (see route). Forward sends what the client has
// already said in the stream's first frame; both sides then copy both ways
// with Join, passing a FIN on as a half-close and a reset as a reset.
//
// It does not dial or accept anything itself, speak TLS, or write a PROXY
// protocol header: the engine does those before it hands a connection over.
package tcproute

import (
	"syscall"

	"github.com/pqtunnel/pqtunnel/route"
	"github.com/pqtunnel/pqtunnel/wire"
)

// Kind is the TCP route kind.
type Kind struct{}

var _ route.Kind = Kind{}

// Wire is wire.KindTCP.
func (Kind) Wire() wire.Kind { return wire.KindTCP }

// Forward opens the client's stream with the bytes the client sent already
// (a plain socket's: bytes read past a TLS handshake are inside the TLS
// connection) and copies both ways.
func (Kind) Forward(client route.Conn, l route.Local) {
	var first func([]byte) ([]byte, error)
	if sc, plain := client.(syscall.Conn); plain {
		first = func(dst []byte) ([]byte, error) { return appendEarly(sc, dst) }
	}
	st, err := l.Open(first)
	if err != nil {
		return
	}
	// The client's bytes flow at once; the peer's answer gates the other direction.
	l.Carry(func() (int64, int64, error) { return Join(client, st, l.IdleTimeout()) })
}

// Handle dials the origin, answers the peer and copies both ways.
func (Kind) Handle(st route.Conn, f route.Far) {
	origin, err := f.Dial()
	if err != nil {
		return
	}
	if err := f.Accept(); err != nil {
		_ = origin.Close() // the stream is gone: nothing to deliver
		return
	}
	f.Carry(func() (int64, int64, error) { return Join(st, origin, f.IdleTimeout()) })
}

package proxy

import (
	"net"
	"syscall"

	"github.com/pqtunnel/pqtunnel/route"
	"github.com/pqtunnel/pqtunnel/transport"
)

// sockConn is a client or origin socket: *net.TCPConn or *net.UnixConn,
// both of which half-close.
type sockConn interface {
	net.Conn
	CloseWrite() error
	syscall.Conn
}

// sockEnd adapts a client or origin socket: Abort sends a TCP RST rather
// than FIN; a Unix socket has no reset, so Abort closes it.
type sockEnd struct{ sockConn }

func (s sockEnd) Abort() {
	if t, ok := s.sockConn.(*net.TCPConn); ok {
		_ = t.SetLinger(0) // RST tells the peer the stream failed
	}
	_ = s.Close()
}

// streamEnd adapts a tunnel stream: Abort resets it.
type streamEnd struct{ transport.Stream }

func (s streamEnd) Abort() { s.Reset() }

var (
	_ route.Conn = sockEnd{}
	_ route.Conn = streamEnd{}
	_ route.Conn = tlsEnd{}
)

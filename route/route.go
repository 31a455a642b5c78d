// Package route is the seam between the engine and the kinds of stream it
// carries. A route kind (TCP today, wire.KindTCP) is one small package
// whose Kind has two sides: Forward, which carries a client the engine
// accepted on a forward route through a stream the engine opens for it,
// and Handle, which delivers a stream the peer opened to a target route.
// The engine keeps everything around them: accepting clients, tls://
// termination and origination, Unix sockets, the PROXY protocol header,
// picking a tunnel, the preamble and the peer's answer, limits, drain,
// the access log and the observer. A kind only moves the bytes of its
// streams, and reaches the engine through Local and Far.
//
// A kind is registered with the engine by its Wire value (proxy's table of
// kinds, or proxy.Config.Kinds); a stream of a kind the receiving side has
// not registered is refused with wire.StatusUnknownKind, leaving the tunnel up.
package route

import (
	"errors"
	"io"
	"time"

	"github.com/pqtunnel/pqtunnel/wire"
)

// Conn is one end of a carried connection: a client or origin socket, a
// TLS connection over one, or a tunnel stream.
type Conn interface {
	io.Reader
	io.Writer
	// CloseWrite ends the writing direction (a FIN, a TLS close_notify, a
	// stream's half-close); reads go on.
	CloseWrite() error
	// Close ends both directions; blocked reads and writes return.
	Close() error
	SetDeadline(time.Time) error
	// Abort ends the connection as a failure that the other end sees as
	// one: a TCP reset, a stream reset (a Unix socket, which has no reset,
	// is closed). Blocked reads and writes return.
	Abort()
}

// Kind delivers the streams of one wire.Kind. It holds no state of its
// own: one value serves every engine and every stream.
type Kind interface {
	// Wire is the kind's value in the stream preamble (wire.Request.Kind).
	// It is neither wire.KindRouteQuery nor that of another registered kind.
	Wire() wire.Kind
	// Forward carries one client of a forward route of this kind. The
	// client is a plain socket whose bytes are the client's own exactly
	// when it is also a syscall.Conn (a TLS connection the engine
	// terminated is not). Forward opens the client's stream with l.Open
	// and ends by handing the copy to l.Carry; when Open fails the engine
	// has refused the client already and Forward returns. Forward
	// returning without Carry aborts the client and the stream.
	Forward(client Conn, l Local)
	// Handle delivers one stream the peer opened, which the engine has
	// read the preamble of and admitted to a target route of this kind.
	// Handle reaches the route's origin through f, answers the peer with
	// f.Accept before anything from the origin goes to st, and ends by
	// handing the copy to f.Carry; when f.Dial or f.Accept fails the
	// engine has answered, logged and reset what it must, and Handle
	// returns after closing what it opened itself. Handle returning
	// without Carry resets st.
	Handle(st Conn, f Far)
}

// Copy is a connection's copying that a kind hands to the engine: it runs
// until the connection has ended both ways and returns the bytes moved
// from the side that accepted or opened it (the client, the peer's stream)
// to the other, the bytes moved back, and why it ended: nil for a clean end
// both ways, an error wrapping ErrIdle when the idle timeout ended it, else
// the first failure, unchanged, so that the engine can tell the peer's
// refusal of the stream from other failures.
type Copy func() (up, down int64, err error)

// Local is the engine's side of one client accepted on a forward route.
type Local interface {
	// Open opens the client's stream on the tunnel the engine picked and
	// writes the preamble, followed in the same frame by what appendFirst
	// appends to the slice it is given: bytes the client sent already, at
	// most FirstDataSize, read without waiting. appendFirst may be nil.
	// The stream returned answers reads only once the peer accepted it; a
	// refusal is a read error. On failure the engine has refused the
	// client (logged, counted, aborted).
	Open(appendFirst func(dst []byte) ([]byte, error)) (Conn, error)
	// IdleTimeout is how long the copy may move no byte either way before
	// it ends both ends with ErrIdle; zero means never.
	IdleTimeout() time.Duration
	// Carry runs copy in a goroutine of its own, so that the stack Forward
	// grew while setting up is not held for the connection's life, and
	// accounts the outcome (log, metrics, access line, the client's slot).
	// Forward returns right after it.
	Carry(copy Copy)
}

// Far is the engine's side of one admitted stream.
type Far interface {
	// Request is the stream's preamble as the peer sent it: the route and
	// the addresses it states.
	Request() wire.Request
	// Dial connects to the target route's origin as this side's
	// configuration says (the route's address or Unix socket, the PROXY
	// protocol header, TLS for a tls:// route), bounded by the dial
	// timeout. On failure the engine has refused the stream to the peer
	// with the status that fits.
	Dial() (Conn, error)
	// Accept answers the peer wire.StatusOK: the stream is delivered. On
	// failure the engine has logged it and reset the stream.
	Accept() error
	// IdleTimeout is as Local's.
	IdleTimeout() time.Duration
	// Carry is as Local's, for the delivered stream.
	Carry(copy Copy)
}

// FirstDataSize bounds the client bytes a kind may send in a stream's first
// frame, after the preamble.
const FirstDataSize = 2048

// ErrIdle is wrapped by the error of a copy that the idle timeout ended.
var ErrIdle = errors.New("no byte in either direction for the stream idle timeout")

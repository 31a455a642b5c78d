// Package wire is pqtunnel's per-stream wire format: the preamble the
// opener of a stream writes, the status the acceptor answers with, and the
// protocol version both are part of. It reads and writes bytes only.
package wire

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// Version is the stream wire format's version; it changes only with the
// format, and ALPN carries it so that peers of different versions refuse
// each other in the TLS handshake rather than on the first stream.
const Version = 2

// ALPN is the application protocol of pqtunnel tunnel connections.
const ALPN = "pqtunnel/2"

// RetiredALPNs are the earlier protocol versions. A dial side offers them
// after ALPN only to recognise an older listen side and refuse it with an
// error that names both versions; it never speaks them.
var RetiredALPNs = []string{"pqtunnel/1"}

// Stream preamble, written by the side that opens a stream:
//
//	version (1 byte) | kind (1) | route length (1) | route
//	| client address length (1) | client address
//	| server address length (1) | server address
//	| extension count (1) | count × (type (1) | length (1) | value)
//
// The opener may send payload right after it. The acceptor answers before
// any origin bytes with:
//
//	version (1 byte) | status (1) | message length (1) | message
//
// Every field is bounded by its one-byte length and there are at most
// MaxExtensions extensions, so a parser reads at most 6+3*255+16*257 bytes
// and never allocates more.

// Kind says what a stream carries, and so how the acceptor delivers it.
type Kind byte

const (
	// KindTCP is a byte stream to a TCP target route.
	KindTCP Kind = 0
	// KindRouteQuery asks whether the acceptor delivers the request's
	// route to this peer, for 'pqtunnel check'; no payload follows. The
	// acceptor dials nothing and answers StatusOK, or StatusUnknownRoute
	// with the routes the peer may use; an acceptor that predates the
	// query answers StatusUnknownKind. Its value is the last one, so that
	// kinds that deliver streams count up from KindTCP without meeting it.
	KindRouteQuery Kind = 0xff
)

func (k Kind) String() string {
	switch k {
	case KindTCP:
		return "tcp"
	case KindRouteQuery:
		return "route query"
	}
	return fmt.Sprintf("kind(%d)", byte(k))
}

// Extension is one optional field of a request. A receiver ignores the
// types it does not know, so a newer opener can add fields without
// breaking an older acceptor of the same version.
type Extension struct {
	Type  byte
	Value []byte // at most 255 bytes
}

// MaxExtensions bounds the extensions of one request.
const MaxExtensions = 16

// Request is the opener's preamble.
type Request struct {
	Kind Kind
	// Route names the target at the far side; "" is the unnamed route.
	Route string
	// Client is the original client's address ("ip:port", or AddrLocal),
	// for PROXY protocol.
	Client string
	// Server is the address the client connected to ("ip:port", or
	// AddrLocal), for PROXY protocol.
	Server string
	// Extensions are carried in order; nil when there are none.
	Extensions []Extension
}

// Extension returns the value of the first extension of type typ.
func (r *Request) Extension(typ byte) ([]byte, bool) {
	for _, x := range r.Extensions {
		if x.Type == typ {
			return x.Value, true
		}
	}
	return nil, false
}

// Status is the acceptor's verdict on a stream.
type Status byte

const (
	StatusOK Status = iota
	StatusUnknownRoute
	StatusOriginRefused
	StatusOriginTimeout
	StatusOriginError
	StatusBusy
	StatusDraining
	// StatusUnknownKind refuses a stream of a kind this side cannot deliver.
	StatusUnknownKind
	// StatusBadPreamble refuses a stream whose preamble decoded but carries
	// a value the acceptor cannot use, such as a client address that is not
	// ip:port.
	StatusBadPreamble
	statusEnd
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusUnknownRoute:
		return "unknown route"
	case StatusOriginRefused:
		return "origin refused"
	case StatusOriginTimeout:
		return "origin timeout"
	case StatusOriginError:
		return "origin error"
	case StatusBusy:
		return "busy"
	case StatusDraining:
		return "draining"
	case StatusUnknownKind:
		return "unknown kind"
	case StatusBadPreamble:
		return "bad preamble"
	}
	return fmt.Sprintf("status(%d)", byte(s))
}

// Label is the status as a metric label value.
func (s Status) Label() string { return strings.ReplaceAll(s.String(), " ", "_") }

// Response is the acceptor's answer.
type Response struct {
	Status Status
	// Message explains a refusal in words, for the opener's log.
	Message string
}

// ErrPreamble is wrapped by every malformed preamble or response.
// AddrLocal stands for an address that is no ip:port: the client came
// through a Unix socket on the opener's host. A receiver accepts it as a
// client without a network address (PROXY protocol LOCAL or UNKNOWN).
const AddrLocal = "local"

var ErrPreamble = errors.New("malformed stream preamble")

// MaxField bounds every length-prefixed field: route, addresses, message, extension value.
const MaxField = 255

// AppendRequest encodes r; a field longer than 255 bytes, or more than
// MaxExtensions extensions, is an error.
func AppendRequest(dst []byte, r Request) ([]byte, error) {
	if len(r.Route) > MaxField || len(r.Client) > MaxField || len(r.Server) > MaxField {
		return nil, fmt.Errorf("%w: field longer than %d bytes", ErrPreamble, MaxField)
	}
	if len(r.Extensions) > MaxExtensions {
		return nil, fmt.Errorf("%w: %d extensions, at most %d", ErrPreamble, len(r.Extensions), MaxExtensions)
	}
	for _, x := range r.Extensions {
		if len(x.Value) > MaxField {
			return nil, fmt.Errorf("%w: extension %d longer than %d bytes", ErrPreamble, x.Type, MaxField)
		}
	}
	dst = append(dst, Version, byte(r.Kind), byte(len(r.Route)))
	dst = append(dst, r.Route...)
	dst = append(dst, byte(len(r.Client)))
	dst = append(dst, r.Client...)
	dst = append(dst, byte(len(r.Server)))
	dst = append(dst, r.Server...)
	dst = append(dst, byte(len(r.Extensions)))
	for _, x := range r.Extensions {
		dst = append(dst, x.Type, byte(len(x.Value)))
		dst = append(dst, x.Value...)
	}
	return dst, nil
}

// ReadRequest decodes one request from r, reading no further than it.
func ReadRequest(r io.Reader) (Request, error) {
	var req Request
	if err := readVersion(r); err != nil {
		return req, err
	}
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return req, fmt.Errorf("%w: kind: %w", ErrPreamble, err)
	}
	req.Kind = Kind(b[0])
	var err error
	if req.Route, err = readField(r, "route"); err != nil {
		return req, err
	}
	if req.Client, err = readField(r, "client address"); err != nil {
		return req, err
	}
	if req.Server, err = readField(r, "server address"); err != nil {
		return req, err
	}
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return req, fmt.Errorf("%w: extension count: %w", ErrPreamble, err)
	}
	n := int(b[0])
	if n > MaxExtensions {
		return req, fmt.Errorf("%w: %d extensions, at most %d", ErrPreamble, n, MaxExtensions)
	}
	if n > 0 {
		req.Extensions = make([]Extension, n)
	}
	for i := range req.Extensions {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return req, fmt.Errorf("%w: extension type: %w", ErrPreamble, err)
		}
		req.Extensions[i].Type = b[0]
		v, err := readField(r, "extension")
		if err != nil {
			return req, err
		}
		req.Extensions[i].Value = []byte(v)
	}
	return req, nil
}

// AppendResponse encodes r, truncating a long message.
func AppendResponse(dst []byte, r Response) []byte {
	msg := r.Message
	if len(msg) > MaxField {
		msg = msg[:MaxField]
	}
	dst = append(dst, Version, byte(r.Status), byte(len(msg)))
	return append(dst, msg...)
}

// ReadResponse decodes one response from r, reading no further than it.
func ReadResponse(r io.Reader) (Response, error) {
	var resp Response
	if err := readVersion(r); err != nil {
		return resp, err
	}
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return resp, fmt.Errorf("%w: status: %w", ErrPreamble, err)
	}
	resp.Status = Status(b[0])
	if resp.Status >= statusEnd {
		return resp, fmt.Errorf("%w: unknown status %d", ErrPreamble, b[0])
	}
	var err error
	resp.Message, err = readField(r, "message")
	return resp, err
}

func readVersion(r io.Reader) error {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("%w: version: %w", ErrPreamble, err)
	}
	if b[0] != Version {
		return fmt.Errorf("%w: version %d not supported (want %d)", ErrPreamble, b[0], Version)
	}
	return nil
}

func readField(r io.Reader, what string) (string, error) {
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", fmt.Errorf("%w: %s length: %w", ErrPreamble, what, err)
	}
	buf := make([]byte, n[0])
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrPreamble, what, err)
	}
	return string(buf), nil
}

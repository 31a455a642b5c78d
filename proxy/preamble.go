package proxy

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// Stream preamble, written by the side that opens a stream:
//
//	version (1 byte) | route length (1) | route | client address length (1) | client address
//	| server address length (1) | server address
//
// The opener may send payload right after it. The acceptor answers before
// any origin bytes with:
//
//	version (1 byte) | status (1) | message length (1) | message
//
// Every field is bounded by its one-byte length, so a parser reads at most
// 4+3*255 bytes and never allocates more.
const preambleVersion = 1

// Request is the opener's preamble.
type Request struct {
	// Route names the target at the far side; "" is the unnamed route.
	Route string
	// Client is the original client's address ("ip:port"), for PROXY protocol.
	Client string
	// Server is the address the client connected to, for PROXY protocol.
	Server string
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
	}
	return fmt.Sprintf("status(%d)", byte(s))
}

// label is the status as a metric label value.
func (s Status) label() string { return strings.ReplaceAll(s.String(), " ", "_") }

// Response is the acceptor's answer.
type Response struct {
	Status Status
	// Message explains a refusal in words, for the opener's log.
	Message string
}

// ErrPreamble is wrapped by every malformed preamble or response.
var ErrPreamble = errors.New("malformed stream preamble")

const maxField = 255

// AppendRequest encodes r; fields longer than 255 bytes are an error.
func AppendRequest(dst []byte, r Request) ([]byte, error) {
	if len(r.Route) > maxField || len(r.Client) > maxField || len(r.Server) > maxField {
		return nil, fmt.Errorf("%w: field longer than %d bytes", ErrPreamble, maxField)
	}
	dst = append(dst, preambleVersion, byte(len(r.Route)))
	dst = append(dst, r.Route...)
	dst = append(dst, byte(len(r.Client)))
	dst = append(dst, r.Client...)
	dst = append(dst, byte(len(r.Server)))
	return append(dst, r.Server...), nil
}

// ReadRequest decodes one request from r, reading no further than it.
func ReadRequest(r io.Reader) (Request, error) {
	var req Request
	if err := readVersion(r); err != nil {
		return req, err
	}
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
	return req, nil
}

// AppendResponse encodes r, truncating a long message.
func AppendResponse(dst []byte, r Response) []byte {
	msg := r.Message
	if len(msg) > maxField {
		msg = msg[:maxField]
	}
	dst = append(dst, preambleVersion, byte(r.Status), byte(len(msg)))
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
	if b[0] != preambleVersion {
		return fmt.Errorf("%w: version %d not supported (want %d)", ErrPreamble, b[0], preambleVersion)
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

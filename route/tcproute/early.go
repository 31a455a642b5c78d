package tcproute

import (
	"fmt"
	"slices"
	"syscall"

	"github.com/pqtunnel/pqtunnel/route"
)

// appendEarly appends to dst what the client has already sent, up to
// route.FirstDataSize, without waiting for more. Most clients speak first
// (HTTP, Redis, a TLS ClientHello): their request then crosses the tunnel
// in the same frame as the preamble, which saves the far side a wake-up
// per connection. A client that sent nothing, or only its FIN, adds
// nothing: the copy that follows reads the FIN again.
func appendEarly(c syscall.Conn, dst []byte) ([]byte, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return dst, nil // nothing early then; the copy reads it all
	}
	n0 := len(dst)
	dst = slices.Grow(dst, route.FirstDataSize)
	buf := dst[n0 : n0+route.FirstDataSize]
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, rerr = readNow(fd, buf)
		return true // one try: never wait for the client
	}); err != nil {
		return dst[:n0], fmt.Errorf("read early client data: %w", err)
	}
	if rerr != nil {
		return dst[:n0], fmt.Errorf("read early client data: %w", rerr)
	}
	return dst[:n0+n], nil
}

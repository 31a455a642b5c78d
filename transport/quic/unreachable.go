package quic

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
)

// unreachableEvery is how often watchPortUnreachable asks again: an ICMP
// answer may be lost or rate-limited like any other packet.
const unreachableEvery = 500 * time.Millisecond

// watchPortUnreachable sends empty datagrams to raddr from a connected UDP
// socket, which unlike the dial's unconnected one hears ICMP errors, and
// cancels with transport.ErrPortUnreachable when one says the port is
// closed, so that a dial fails at once rather than at its handshake timeout
// (and auto moves to TCP at once). A QUIC server drops an empty datagram
// unread. stop ends the watch and waits for it.
func watchPortUnreachable(ctx context.Context, raddr *net.UDPAddr, cancel context.CancelCauseFunc) (stop func()) {
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return func() {} // the dial itself reports what is wrong with the address
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1)
		for ctx.Err() == nil {
			_, _ = c.Write(nil) // the answer, if any, comes to the read
			_ = c.SetReadDeadline(time.Now().Add(unreachableEvery))
			_, err := c.Read(buf)
			switch {
			case isPortUnreachable(err):
				cancel(transport.ErrPortUnreachable)
				return
			case errors.Is(err, net.ErrClosed):
				return // stopped
			}
		}
	}()
	return func() {
		_ = c.Close() // unblocks the read
		<-done
	}
}

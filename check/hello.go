package check

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// recordingConn keeps what was written before the first read (the
// ClientHello) and the first bytes read (the ServerHello record).
type recordingConn struct {
	net.Conn
	mu      sync.Mutex
	written int
	readAny bool
	read    []byte
}

const maxRecorded = 16 << 10

func (r *recordingConn) Write(b []byte) (int, error) {
	r.mu.Lock()
	if !r.readAny {
		r.written += len(b)
	}
	r.mu.Unlock()
	return r.Conn.Write(b)
}

func (r *recordingConn) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.mu.Lock()
	r.readAny = true
	if room := maxRecorded - len(r.read); room > 0 {
		r.read = append(r.read, b[:min(n, room)]...)
	}
	r.mu.Unlock()
	return n, err
}

// hellos parses the first server record as a ServerHello and returns the
// sizes and the key_share group it selects.
func (r *recordingConn) hellos() (clientHello, serverHello int, group tls.CurveID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.read
	if len(rec) < 5 || rec[0] != 22 {
		return r.written, 0, 0
	}
	n := int(binary.BigEndian.Uint16(rec[3:5]))
	if len(rec) < 5+n {
		return r.written, 0, 0
	}
	g, _ := ServerHelloKeyShare(rec[5 : 5+n])
	return r.written, 5 + n, g
}

// ServerHelloKeyShare returns the group of the key_share extension in a TLS
// 1.3 ServerHello handshake message (type 2), parsing only what it needs.
func ServerHelloKeyShare(msg []byte) (tls.CurveID, error) {
	errShort := errors.New("truncated ServerHello")
	if len(msg) < 4 || msg[0] != 2 {
		return 0, errors.New("not a ServerHello")
	}
	body := msg[4:]
	// legacy_version(2) random(32) session_id(1+n) cipher(2) compression(1)
	if len(body) < 35 {
		return 0, errShort
	}
	sid := int(body[34])
	off := 35 + sid + 3
	if len(body) < off+2 {
		return 0, errShort
	}
	extLen := int(binary.BigEndian.Uint16(body[off:]))
	exts := body[off+2:]
	if len(exts) < extLen {
		return 0, errShort
	}
	exts = exts[:extLen]
	for len(exts) >= 4 {
		typ := binary.BigEndian.Uint16(exts)
		l := int(binary.BigEndian.Uint16(exts[2:]))
		if len(exts) < 4+l {
			return 0, errShort
		}
		if typ == 51 && l >= 2 { // key_share
			return tls.CurveID(binary.BigEndian.Uint16(exts[4:])), nil
		}
		exts = exts[4+l:]
	}
	return 0, errors.New("ServerHello has no key_share")
}

// countingPacketConn counts the datagrams of the client's first flight:
// those sent at once at the start, before the server's first flight
// arrives. A server may acknowledge the first Initial packet at once with a
// small datagram, so only a large one (its ServerHello and certificate)
// ends the count.
const serverFlightMin = 1000

// firstFlightGap ends the first flight at the first pause this long between
// two datagrams. quic-go sends the whole flight in one go and, while the
// server is silent, retransmits it only when its first probe timeout fires,
// 200 ms later (twice its initial RTT estimate of 100 ms). Counting those
// retransmissions, as check once did, reported 4 or 8 datagrams for a
// 2-datagram flight whenever the listen side took longer than that to
// answer (a busy machine, SecP384r1MLKEM1024).
const firstFlightGap = 100 * time.Millisecond

type countingPacketConn struct {
	net.PacketConn
	mu               sync.Mutex
	received, paused bool
	last             time.Time // when the last counted datagram was sent
	sentBytes, sentN int
}

func (c *countingPacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	now := time.Now()
	if c.sentN > 0 && now.Sub(c.last) >= firstFlightGap {
		c.paused = true
	}
	if !c.received && !c.paused {
		c.sentBytes += len(b)
		c.sentN++
		c.last = now
	}
	c.mu.Unlock()
	return c.PacketConn.WriteTo(b, addr)
}

func (c *countingPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(b)
	if err == nil && n >= serverFlightMin {
		c.mu.Lock()
		c.received = true
		c.mu.Unlock()
	}
	return n, addr, err
}

// SetReadBuffer, SetWriteBuffer and SyscallConn let quic-go size the
// socket buffers as it does for a plain UDP socket.
func (c *countingPacketConn) SetReadBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetReadBuffer(n)
}

func (c *countingPacketConn) SetWriteBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetWriteBuffer(n)
}

func (c *countingPacketConn) SyscallConn() (syscall.RawConn, error) {
	return c.PacketConn.(*net.UDPConn).SyscallConn()
}

func (c *countingPacketConn) firstFlight() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sentBytes, c.sentN
}

package tlsmux

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// recordConn sits between crypto/tls and the TCP socket. crypto/tls writes
// each TLS record of at most 16 KiB with its own write system call and reads
// about one record per read, so a 256 KiB frame would cost sixteen of each.
// recordConn reads ahead into a buffer and, while a batch is open, collects
// written records so that a whole yamux frame leaves in one system call.
type recordConn struct {
	net.Conn
	r *bufio.Reader

	mu       sync.Mutex
	batching bool
	out      []byte

	// Until the handshake is done, writes are scanned for a plaintext TLS
	// alert record, the only way to learn which alert crypto/tls sent.
	handshook atomic.Bool
	alert     atomic.Int32 // the alert description plus one; 0 for none

	// lastRead is when bytes last came from the peer, in UnixNano: a peer
	// whose kernel still acknowledges but that sends nothing, not even a
	// pong, is stopped or stuck (see watchAcks).
	lastRead atomic.Int64
}

// recordBufSize is what recordConn reads ahead: sixteen 4 KiB pages, four
// full TLS records.
const recordBufSize = 64 << 10

// maxRecordLen is the longest TLS record body (RFC 8446, section 5.2).
const maxRecordLen = 1<<14 + 256

// keepOutBuf bounds the write buffer kept between batches: one largest yamux
// frame (256 KiB) with its TLS record overhead, rounded up.
const keepOutBuf = 320 << 10

func newRecordConn(c net.Conn) *recordConn {
	rc := &recordConn{Conn: c, r: bufio.NewReaderSize(c, recordBufSize)}
	rc.lastRead.Store(time.Now().UnixNano())
	return rc
}

func (c *recordConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

// silence is how long the peer has sent nothing.
func (c *recordConn) silence() time.Duration {
	return time.Since(time.Unix(0, c.lastRead.Load()))
}

// awaitFirstRecord waits until the first TLS record has arrived whole, or
// fails at deadline. It
// consumes nothing: crypto/tls reads the record afterwards.
func (c *recordConn) awaitFirstRecord(deadline time.Time) error {
	if err := c.Conn.SetReadDeadline(deadline); err != nil {
		return fmt.Errorf("first tls record: %w", err)
	}
	hdr, err := c.r.Peek(5)
	if err == nil {
		// A record longer than TLS allows is crypto/tls's to refuse, at once.
		if n := int(hdr[3])<<8 | int(hdr[4]); n <= maxRecordLen {
			_, err = c.r.Peek(5 + n)
		}
	}
	if err != nil {
		return fmt.Errorf("first tls record: %w", err)
	}
	if err := c.Conn.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("first tls record: %w", err)
	}
	return nil
}

// Write collects p while a batch is open; crypto/tls serializes its writes,
// so records are collected in the order it produced them.
func (c *recordConn) Write(p []byte) (int, error) {
	if !c.handshook.Load() {
		c.scanAlert(p)
	}
	c.mu.Lock()
	if c.batching {
		c.out = append(c.out, p...)
		c.mu.Unlock()
		return len(p), nil
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// scanAlert records the first plaintext alert record in p. Before the
// handshake keys are in use an alert travels in the clear as content type
// 21 with a two-byte body: level, description.
func (c *recordConn) scanAlert(p []byte) {
	for len(p) >= 5 {
		n := int(p[3])<<8 | int(p[4])
		if p[0] == 21 && n == 2 && len(p) >= 7 {
			c.alert.CompareAndSwap(0, int32(p[6])+1)
			return
		}
		if len(p) < 5+n {
			return
		}
		p = p[5+n:]
	}
}

// sentAlert returns the alert crypto/tls sent during the handshake, if any.
func (c *recordConn) sentAlert() (uint8, bool) {
	a := c.alert.Load()
	return uint8(a - 1), a > 0
}

// handshakeDone stops scanning writes for alerts.
func (c *recordConn) handshakeDone() { c.handshook.Store(true) }

func (c *recordConn) begin() {
	c.mu.Lock()
	c.batching = true
	c.mu.Unlock()
}

// flush ends the batch and writes what it collected. The buffer is kept for
// the next frame (reallocating a frame's worth per frame doubles the cost of
// sending), up to keepOutBuf; a larger one is let go.
func (c *recordConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = false
	if len(c.out) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.out)
	if cap(c.out) > keepOutBuf {
		c.out = nil
	} else {
		c.out = c.out[:0]
	}
	return err
}

// batchedTLS is the tls.Conn under yamux's groupWriter: each write of
// frames leaves the socket as one system call however many records it takes.
type batchedTLS struct {
	*tls.Conn
	raw *recordConn
}

// writeFrames writes a then b through TLS and leaves the socket in one
// system call; either may be empty.
func (b *batchedTLS) writeFrames(a, c []byte) error {
	b.raw.begin()
	var err error
	for _, p := range [][]byte{a, c} {
		if len(p) > 0 && err == nil {
			_, err = b.Conn.Write(p)
		}
	}
	if ferr := b.raw.flush(); err == nil {
		err = ferr
	}
	return err
}

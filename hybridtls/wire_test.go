package hybridtls

import (
	"net"
	"sync"
)

// tapConn records the bytes a net.Conn sends and receives, for
// internal/tlswire to decrypt.
type tapConn struct {
	net.Conn
	mu             sync.Mutex
	sent, received []byte
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.received = append(c.received, p[:n]...)
	c.mu.Unlock()
	return n, err
}

func (c *tapConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.sent = append(c.sent, p[:n]...)
	c.mu.Unlock()
	return n, err
}

func (c *tapConn) captured() (sent, received []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.sent...), append([]byte(nil), c.received...)
}

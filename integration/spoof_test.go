package integration

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pqtunnel/pqtunnel/wire"
)

// spfDeaf is a UDP socket that sends but never receives, as a client with
// a spoofed source address: it cannot answer a Retry or anything else.
type spfDeaf struct {
	net.PacketConn
	closed chan struct{}
	once   sync.Once
}

func (d *spfDeaf) ReadFrom([]byte) (int, net.Addr, error) {
	<-d.closed
	return 0, nil, net.ErrClosed
}

func (d *spfDeaf) Close() error {
	d.once.Do(func() { close(d.closed) })
	return d.PacketConn.Close()
}

// spfInitial sends a real post-quantum ClientHello in QUIC Initials from a
// new socket on ip that never reads an answer, for d.
func spfInitial(ctx context.Context, ip, addr string, d time.Duration) error {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		return err
	}
	deaf := &spfDeaf{PacketConn: pc, closed: make(chan struct{})}
	tr := &quic.Transport{Conn: deaf}
	// The socket first: the transport's Close waits for its reader.
	defer tr.Close()
	defer deaf.Close()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	conf := &tls.Config{MinVersion: tls.VersionTLS13, CurvePreferences: []tls.CurveID{tls.X25519MLKEM768}, InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}}
	_, _ = tr.Dial(ctx, raddr, conf, &quic.Config{HandshakeIdleTimeout: d}) // it cannot complete
	return nil
}

// TestSpoofedQUICInitialsHoldNoSlots sends QUIC Initials from 300 sources
// that never answer (as with spoofed addresses) while a real dial side
// connects: the listen side asks them for a Retry once any handshake is in
// progress, so they hold almost no handshake slot (each slot they held ends
// in a timeout, which is counted) and cost no first flight, and the dial side
// connects at once.
func TestSpoofedQUICInitialsHoldNoSlots(t *testing.T) {
	const (
		spoofed          = 300
		handshakeTimeout = 3 * time.Second
	)
	ctx := testContext(t, 90*time.Second)
	lm := metAddr(t)
	l := startListen(t, ctx, 0, "quic", map[string]string{
		"PQT_TARGET":            startEcho(t).addr(),
		"PQT_HANDSHAKE_TIMEOUT": handshakeTimeout.String(),
		"PQT_MAX_HANDSHAKES":    "64",
		"PQT_METRICS":           lm,
	})
	var wg sync.WaitGroup
	start := time.Now()
	for i := range spoofed {
		ip := net.IPv4(127, 0, byte(1+i/250), byte(2+i%250)).String()
		wg.Go(func() { _ = spfInitial(ctx, ip, l.tunnelAddr, 2*handshakeTimeout) })
		if i%50 == 49 {
			time.Sleep(20 * time.Millisecond) // a flood over a fraction of a second
		}
	}
	dialStart := time.Now()
	d := startDial(t, ctx, l.tunnelAddr, "quic", nil, map[string]string{"PQT_CONNECTIONS": "1"})
	d.waitLog(t, within(t, ctx, 20*time.Second), msgIs("tunnel connected", "transport", "quic"))
	connected := time.Since(dialStart)
	wg.Wait()
	// Every slot a spoofed source held has ended in a timeout by now.
	m := metAwait(t, ctx, "listen side", lm, 2*handshakeTimeout, func(m metSet) error { return nil })
	timeouts, _ := m.value("pqtunnel_handshake_failures_total", "reason", "timeout")
	t.Logf("%d spoofed sources over %s: %g held a handshake slot until the timeout; the dial side connected after %s",
		spoofed, dialStart.Sub(start).Round(time.Millisecond), timeouts, connected.Round(time.Millisecond))
	if timeouts > 8 {
		t.Errorf("%g spoofed sources held a handshake slot, want at most 8 of %d", timeouts, spoofed)
	}
	if connected > 3*time.Second {
		t.Errorf("the dial side connected after %s during the flood, want within 3s", connected)
	}
}

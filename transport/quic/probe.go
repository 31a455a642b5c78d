package quic

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pqtunnel/pqtunnel/transport"
)

// Keep-alive probes travel as QUIC datagrams (RFC 9221): one kind byte, a
// sequence number, and zeros up to probeSize, so that a packet carrying a
// probe is large enough to draw a stateless reset from a restarted peer
// (quic-go answers none to packets of 42 bytes or fewer). Each side sends its own pings and answers the peer's
// with pongs; only a pong proves that the path works both ways. QUIC's own
// keep-alive PINGs cannot tell: the peer's packets keep arriving on a path
// that is dead only towards the peer, which resets the idle timer here.
const (
	probePing = 1
	probePong = 2
	probeSize = 48
	// probeHeader is the kind and the sequence number; a receiver ignores
	// what follows, so that a later version may carry more.
	probeHeader = 9
)

// appendProbe appends a probe of kind with sequence number seq to dst.
func appendProbe(dst []byte, kind byte, seq uint64) []byte {
	dst = binary.BigEndian.AppendUint64(append(dst, kind), seq)
	return append(dst, make([]byte, probeSize-probeHeader)...)
}

// errNotProbe is returned by parseProbe for a datagram that is not a probe.
var errNotProbe = errors.New("not a keep-alive probe")

// parseProbe reads a probe; any other datagram is errNotProbe, so that a
// later version may send datagrams of other kinds.
func parseProbe(b []byte) (kind byte, seq uint64, err error) {
	if len(b) < probeHeader || (b[0] != probePing && b[0] != probePong) {
		return 0, 0, errNotProbe
	}
	return b[0], binary.BigEndian.Uint64(b[1:]), nil
}

// prober keeps one session's keep-alive probes going and closes the
// connection with codeKeepAlive when nothing has shown for timeout that
// the peer hears us: no pong, and no acknowledgement of our packets. A
// new RTT sample is what shows an acknowledgement (quic-go takes one for
// each ACK that newly acknowledges the packet sent last, and every probe
// is such a packet), so a busy connection whose pongs are late behind its
// data, or lost on a lossy path, is not mistaken for a dead one; on a path
// dead towards the peer neither arrives, whatever still comes from it.
type prober struct {
	conn     *quic.Conn
	interval time.Duration
	timeout  time.Duration
	// answered is when the peer last showed that it hears us (a pong, or
	// an acknowledgement seen by routineSend), in UnixNano.
	answered atomic.Int64
	// rtt is the RTT estimate routineSend saw last; a change is a new sample.
	rtt [3]time.Duration
}

// startProbing runs the probes of s until its connection ends, if the peer
// takes datagrams (an older pqtunnel does not: its connection then relies
// on the idle timeout alone).
func startProbing(s *quicSession, c *transport.Config) {
	interval := c.ProbeInterval()
	if interval <= 0 || !s.conn.ConnectionState().SupportsDatagrams.Remote {
		return
	}
	p := &prober{conn: s.conn, interval: interval, timeout: c.KeepAliveTimeout}
	p.answered.Store(time.Now().UnixNano())
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		p.routineReceive()
	}()
	go func() {
		defer s.wg.Done()
		p.routineSend()
	}()
}

// routineReceive answers pings and records pongs.
func (p *prober) routineReceive() {
	ctx := p.conn.Context()
	var out []byte
	for {
		b, err := p.conn.ReceiveDatagram(ctx)
		if err != nil {
			return // the connection is gone
		}
		kind, seq, err := parseProbe(b)
		switch {
		case err != nil:
			continue // not ours to answer
		case kind == probePong:
			p.answered.Store(time.Now().UnixNano())
		case kind == probePing:
			out = appendProbe(out[:0], probePong, seq)
			_ = p.conn.SendDatagram(out) // a lost pong is what the peer's timeout allows for
		}
	}
}

// routineSend sends a ping every interval and closes the connection once
// the last pong is older than timeout.
func (p *prober) routineSend() {
	ctx := p.conn.Context()
	var out []byte
	timer := time.NewTimer(0)
	defer timer.Stop()
	// checked is when the RTT estimate was read before: a change seen now
	// happened after it, and it is counted from then, so that the timeout
	// runs from the last acknowledgement rather than from when it was seen.
	checked := time.Now()
	for seq := uint64(0); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		now := time.Now()
		if st := p.conn.ConnectionStats(); [3]time.Duration{st.LatestRTT, st.SmoothedRTT, st.MeanDeviation} != p.rtt {
			p.rtt = [3]time.Duration{st.LatestRTT, st.SmoothedRTT, st.MeanDeviation}
			if checked.UnixNano() > p.answered.Load() {
				p.answered.Store(checked.UnixNano())
			}
		}
		checked = now
		silent := time.Since(time.Unix(0, p.answered.Load()))
		if silent >= p.timeout {
			_ = p.conn.CloseWithError(codeKeepAlive, "keep-alive lost") // the connection ends either way
			return
		}
		out = appendProbe(out[:0], probePing, seq)
		_ = p.conn.SendDatagram(out) // a ping that cannot be sent is a ping unanswered
		timer.Reset(min(p.interval, p.timeout-silent))
	}
}

package quic

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pqtunnel/pqtunnel/transport"
)

// Keep-alive probes travel as QUIC datagrams (RFC 9221): one kind byte, a
// sequence number, the sender's packet counts, and zeros up to probeSize,
// so that a packet carrying a probe is large enough to draw a stateless
// reset from a restarted peer (quic-go answers none to packets of 42 bytes
// or fewer). Each side sends its own pings and answers the peer's
// with pongs; only a pong proves that the path works both ways. QUIC's own
// keep-alive PINGs cannot tell: the peer's packets keep arriving on a path
// that is dead only towards the peer, which resets the idle timer here.
// The packet counts (packets sent and declared lost since the connection
// began) tell a side how much of what the peer sends is lost, which QUIC
// tells only the sender: auto's loss watch judges both directions by them.
// An older peer sends zeros there, which reads as no counts.
const (
	probePing = 1
	probePong = 2
	probeSize = 48
	// probeHeader is the kind and the sequence number; a receiver ignores
	// what follows, so that a later version may carry more.
	probeHeader = 9
	// probeCounts is the header and the two packet counts.
	probeCounts = probeHeader + 16
)

// probe is one keep-alive datagram.
type probe struct {
	kind byte
	seq  uint64
	// sent and lost are the sender's packet counts; zero sent means the
	// sender did not say.
	sent, lost uint64
}

// appendProbe appends p to dst.
func appendProbe(dst []byte, p probe) []byte {
	dst = binary.BigEndian.AppendUint64(append(dst, p.kind), p.seq)
	dst = binary.BigEndian.AppendUint64(dst, p.sent)
	dst = binary.BigEndian.AppendUint64(dst, p.lost)
	return append(dst, make([]byte, probeSize-probeCounts)...)
}

// errNotProbe is returned by parseProbe for a datagram that is not a probe.
var errNotProbe = errors.New("not a keep-alive probe")

// parseProbe reads a probe; any other datagram is errNotProbe, so that a
// later version may send datagrams of other kinds. A probe too short for
// the counts has none.
func parseProbe(b []byte) (probe, error) {
	if len(b) < probeHeader || (b[0] != probePing && b[0] != probePong) {
		return probe{}, errNotProbe
	}
	p := probe{kind: b[0], seq: binary.BigEndian.Uint64(b[1:])}
	if len(b) >= probeCounts {
		p.sent = binary.BigEndian.Uint64(b[probeHeader:])
		p.lost = binary.BigEndian.Uint64(b[probeHeader+8:])
	}
	return p, nil
}

// burstSeq marks the sequence numbers of a loss burst (ProbeLoss), whose
// pongs are counted apart from the keep-alive's; the 31 bits above the
// burst's index number the burst, so that a late pong of an earlier one is
// not counted.
const burstSeq = 1 << 63

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
	// peerSent and peerLost are the packet counts the peer's last probe
	// carried.
	peerSent, peerLost atomic.Uint64
	// burst numbers the current loss burst and burstAnswered counts its
	// pongs; burstMu lets one burst run at a time.
	burstMu       sync.Mutex
	burst         atomic.Uint64
	burstAnswered atomic.Int64
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
	s.prober = p
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
		in, err := parseProbe(b)
		if err != nil {
			continue // not ours to answer
		}
		if in.sent > 0 {
			p.peerSent.Store(in.sent)
			p.peerLost.Store(in.lost)
		}
		switch in.kind {
		case probePong:
			p.answered.Store(time.Now().UnixNano())
			if in.seq>>32 == burstSeq>>32|p.burst.Load() {
				p.burstAnswered.Add(1)
			}
		case probePing:
			out = appendProbe(out[:0], p.counted(probePong, in.seq))
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
		out = appendProbe(out[:0], p.counted(probePing, seq))
		_ = p.conn.SendDatagram(out) // a ping that cannot be sent is a ping unanswered
		timer.Reset(min(p.interval, p.timeout-silent))
	}
}

// counted is a probe of kind and seq with this side's packet counts.
func (p *prober) counted(kind byte, seq uint64) probe {
	st := p.conn.ConnectionStats()
	return probe{kind: kind, seq: seq, sent: st.PacketsSent, lost: st.PacketsLost}
}

// probeLoss sends n pings, one every interval, and counts the pongs that
// come back within a few RTTs of the last.
func (p *prober) probeLoss(ctx context.Context, n int, every time.Duration) (sent, answered int, err error) {
	p.burstMu.Lock()
	defer p.burstMu.Unlock()
	gen := (p.burst.Load() + 1) & (1<<31 - 1)
	p.burstAnswered.Store(0)
	p.burst.Store(gen)
	tick := time.NewTicker(every)
	defer tick.Stop()
	var out []byte
	for i := range n {
		out = appendProbe(out[:0], p.counted(probePing, burstSeq|gen<<32|uint64(i)))
		if err := p.conn.SendDatagram(out); err != nil {
			return sent, int(p.burstAnswered.Load()), fmt.Errorf("send loss probe: %w", err)
		}
		sent++
		select {
		case <-ctx.Done():
			return sent, int(p.burstAnswered.Load()), ctx.Err()
		case <-p.conn.Context().Done():
			return sent, int(p.burstAnswered.Load()), fmt.Errorf("loss probe: %w", context.Cause(p.conn.Context()))
		case <-tick.C:
		}
	}
	// The last pongs are a round trip behind; a pong later than a few
	// RTTs counts as lost, as QUIC would declare it.
	st := p.conn.ConnectionStats()
	wait := time.NewTimer(3*st.SmoothedRTT + 4*st.MeanDeviation + 100*time.Millisecond)
	defer wait.Stop()
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for p.burstAnswered.Load() < int64(sent) {
		select {
		case <-ctx.Done():
			return sent, int(p.burstAnswered.Load()), ctx.Err()
		case <-wait.C:
			return sent, int(p.burstAnswered.Load()), nil
		case <-poll.C:
		}
	}
	return sent, sent, nil
}

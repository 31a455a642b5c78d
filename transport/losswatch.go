package transport

import (
	"context"
	"errors"
	"math"
	"time"
)

// The loss watch decides when auto's primary transport (QUIC, whose
// congestion control is loss-based) is held down by random loss on the
// path, where the secondary (TCP with BBR) keeps its rate: on the WAN test
// bed at 1 % loss QUIC moved 0.02–0.1× direct TCP and the TCP transport
// 9–13× direct TCP with CUBIC at 80 ms. Two things must hold over the last
// lossWindow, in either direction (packets this side sent, or packets the
// peer sent as its keep-alive probes report):
//
//   - the share of packets lost reaches the threshold, with at least
//     lossMinLost of them lost, so that a few lost packets decide nothing;
//   - the losses are spread over time as random loss is: at least three
//     quarters as many of the window's seconds saw a loss as independent
//     loss at the measured rate would give, and that is at least
//     lossMinSeconds. A loss-based sender's own
//     congestion loss comes in bursts, once per congestion epoch and at
//     the end of slow start, when the queue overflows; random loss touches
//     nearly every second that carries a few hundred packets. On the bed
//     without loss, one stream's bursts lost 0.3–1.2 % of the packets of
//     a window in four or five of its ten seconds, where random loss at
//     that rate would have touched all ten (losswatch_test.go replays those
//     samples).

// lossSample is how often the watch reads the session's packet counts.
const lossSample = time.Second

// lossWindow is how many samples the watch judges at once.
const lossWindow = 10

// lossMinLost is the fewest lost packets in a window that can say the
// path is lossy: with fewer the rate is noise. At 80 ms and 0.1 % loss a
// QUIC stream held down by it loses about one packet a second.
const lossMinLost = 5

// lossMinSeconds is the fewest seconds of a window that random loss at the
// measured rate must be expected to touch before the spread of the losses
// says anything: a window whose traffic came in one burst of a second or
// two (a transfer that ended, the rest keep-alives) sees its congestion
// losses in every second it carried, as random loss would.
const lossMinSeconds = 4

// lossCounts are the packet counts of one direction.
type lossCounts struct{ sent, lost uint64 }

// lossVerdict is what the watch concluded from a window.
type lossVerdict struct {
	Lossy bool
	// Direction is "sent" (this side's packets) or "received" (the
	// peer's), the worse of the two when neither is lossy.
	Direction  string
	Sent, Lost uint64
	// Seconds is how many of the window's seconds saw a loss, Expected how
	// many random loss at the window's rate would touch.
	Seconds  int
	Expected float64
}

// Rate is the share of packets lost, 0 to 1.
func (v lossVerdict) Rate() float64 {
	if v.Sent == 0 {
		return 0
	}
	return float64(v.Lost) / float64(v.Sent)
}

// attrs are the figures of v for a log line.
func (v lossVerdict) attrs() []any {
	return []any{"loss", math.Round(v.Rate()*1e5) / 1e3, "direction", v.Direction, "packets", v.Sent, "lost", v.Lost,
		"lossy_seconds", v.Seconds, "window", time.Duration(lossWindow) * lossSample}
}

// lossWatch keeps the last lossWindow+1 samples of both directions.
type lossWatch struct {
	threshold float64
	// samples are cumulative counts, oldest first.
	sent, received []lossCounts
}

func newLossWatch(threshold float64) *lossWatch {
	return &lossWatch{threshold: threshold}
}

// observe adds a sample of the session's counts and judges the window.
func (w *lossWatch) observe(st Stats) lossVerdict {
	w.sent = pushSample(w.sent, lossCounts{st.PacketsSent, st.PacketsLost})
	w.received = pushSample(w.received, lossCounts{st.PeerPacketsSent, st.PeerPacketsLost})
	up := judgeLoss(w.sent, w.threshold)
	up.Direction = "sent"
	down := judgeLoss(w.received, w.threshold)
	down.Direction = "received"
	if up.Lossy || (!down.Lossy && up.Rate() >= down.Rate()) {
		return up
	}
	return down
}

func pushSample(s []lossCounts, c lossCounts) []lossCounts {
	if len(s) == lossWindow+1 {
		s = append(s[:0], s[1:]...)
	}
	return append(s, c)
}

// judgeLoss judges the cumulative counts s (oldest first). Counts that go
// down (packets declared lost that arrived after all, or a peer that does
// not report) count as no loss in that second.
func judgeLoss(s []lossCounts, threshold float64) lossVerdict {
	var v lossVerdict
	if len(s) < lossWindow+1 {
		return v
	}
	perSecond := make([]lossCounts, 0, lossWindow)
	for i := 1; i < len(s); i++ {
		var d lossCounts
		if s[i].sent > s[i-1].sent {
			d.sent = s[i].sent - s[i-1].sent
		}
		if s[i].lost > s[i-1].lost {
			d.lost = s[i].lost - s[i-1].lost
		}
		perSecond = append(perSecond, d)
		v.Sent += d.sent
		v.Lost += d.lost
		if d.lost > 0 {
			v.Seconds++
		}
	}
	p := v.Rate()
	if p <= 0 {
		return v
	}
	for _, d := range perSecond {
		v.Expected += 1 - math.Pow(1-p, float64(d.sent))
	}
	v.Lossy = v.Lost >= lossMinLost && p >= threshold && v.Expected >= lossMinSeconds && float64(v.Seconds) >= 0.75*v.Expected
	return v
}

// ErrNoLossProbe is returned by a session's ProbeLoss when it cannot
// send loss probes (its peer takes no QUIC datagrams).
var ErrNoLossProbe = errors.New("transport: the session cannot probe for loss")

// The loss probe of a session on trial: lossProbes pings, one every
// lossProbeEvery, about a second of 100-byte packets each way. A path with
// 1 % loss each way loses about 20 of them, one with 0.1 % about 2.
const (
	lossProbes     = 1000
	lossProbeEvery = time.Millisecond
)

// probeLoss measures the round-trip loss of s by a burst of probes, if s
// can send them: ok is false when it cannot, and then nothing is known.
func probeLoss(ctx context.Context, s Session) (sent, answered int, ok bool, err error) {
	p, can := s.(interface {
		ProbeLoss(ctx context.Context, n int, every time.Duration) (int, int, error)
	})
	if !can {
		return 0, 0, false, nil
	}
	sent, answered, err = p.ProbeLoss(ctx, lossProbes, lossProbeEvery)
	if errors.Is(err, ErrNoLossProbe) {
		return 0, 0, false, nil
	}
	return sent, answered, err == nil, err
}

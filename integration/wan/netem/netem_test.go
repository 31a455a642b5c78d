package netem

import (
	"encoding/binary"
	"errors"
	"math"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// chanPort is an in-memory Port: what is written to one end of a pair is
// read from the other.
type chanPort struct {
	in, out chan []byte
	done    chan struct{}
}

func portPair() (*chanPort, *chanPort) {
	ab, ba := make(chan []byte, 1<<16), make(chan []byte, 1<<16)
	return &chanPort{in: ba, out: ab, done: make(chan struct{})}, &chanPort{in: ab, out: ba, done: make(chan struct{})}
}

var _ Port = (*chanPort)(nil)

func (p *chanPort) Read(b []byte) (int, error) {
	select {
	case pkt := <-p.in:
		return copy(b, pkt), nil
	case <-p.done:
		return 0, net.ErrClosed
	}
}

func (p *chanPort) Write(b []byte) (int, error) {
	select {
	case p.out <- append([]byte(nil), b...):
		return len(b), nil
	case <-p.done:
		return 0, net.ErrClosed
	default:
		return 0, errors.New("port full")
	}
}

func (p *chanPort) Close() error {
	select {
	case <-p.done:
	default:
		close(p.done)
	}
	return nil
}

// ipv4 is a minimal IPv4 packet of n bytes carrying proto.
func ipv4(n int, proto byte) []byte {
	b := make([]byte, n)
	b[0], b[9] = 0x45, proto
	return b
}

// The link sits between the outer ends: a test writes into aOut (the
// network stack of A sending) and reads from bIn (what B receives).
type rig struct {
	link      *Link
	aOut, bIn *chanPort
}

func newRig(t *testing.T) *rig {
	a, aOut := portPair()
	b, bIn := portPair()
	l := New(a, b, 7)
	t.Cleanup(func() { _ = l.Close() })
	return &rig{link: l, aOut: aOut, bIn: bIn}
}

func (r *rig) send(t *testing.T, pkt []byte) {
	t.Helper()
	if _, err := r.aOut.Write(pkt); err != nil {
		t.Fatal(err)
	}
}

// collect reads from bIn until nothing arrives for quiet.
func (r *rig) collect(quiet time.Duration) (n int, at []time.Time) {
	for {
		select {
		case <-r.bIn.in:
			n++
			at = append(at, time.Now())
		case <-time.After(quiet):
			return n, at
		}
	}
}

func TestLossRateIsConfigured(t *testing.T) {
	r := newRig(t)
	const loss, total = 0.1, 20000
	r.link.Set(AtoB, Config{Loss: loss})
	for range total {
		r.send(t, ipv4(100, 6))
	}
	got, _ := r.collect(200 * time.Millisecond)
	rate := 1 - float64(got)/total
	// Binomial standard deviation is sqrt(p(1-p)/n) ≈ 0.0021; allow 5 of them.
	if math.Abs(rate-loss) > 5*math.Sqrt(loss*(1-loss)/total) {
		t.Fatalf("loss %.4f, want %.2f", rate, loss)
	}
	s := r.link.Stats(AtoB)
	if s.DroppedLoss != uint64(total-got) || s.Delivered != uint64(got) {
		t.Fatalf("stats %+v do not add up to %d delivered of %d", s, got, total)
	}
}

func TestRateCapAndQueueBound(t *testing.T) {
	r := newRig(t)
	const rate, queue, size, total = 8e6, 20000, 1000, 400 // 1 ms per packet
	r.link.Set(AtoB, Config{RateBits: rate, QueueBytes: queue})
	start := time.Now()
	for range total {
		r.send(t, ipv4(size, 6))
	}
	// On a loaded machine the burst itself takes time, during which the
	// link drains one packet per millisecond.
	drained := int(time.Since(start) / (time.Duration(size*8/rate*1e9) * time.Nanosecond))
	got, at := r.collect(200 * time.Millisecond)
	s := r.link.Stats(AtoB)
	// A burst far above the rate: the queue holds queue/size packets, the
	// rest are tail-dropped, and the queue never exceeded its bound.
	if s.MaxQueueBytes > queue {
		t.Fatalf("queue reached %d bytes, bound %d", s.MaxQueueBytes, queue)
	}
	if s.DroppedQueue == 0 || int(s.DroppedQueue)+got != total {
		t.Fatalf("%d delivered, %d tail-dropped of %d", got, s.DroppedQueue, total)
	}
	// The emulator may also read the burst later than it was written, and
	// drain meanwhile: a slack of a twentieth of the burst allows for it.
	if got < queue/size || got > queue/size+drained+total/20 {
		t.Fatalf("%d delivered, want about %d (the queue, plus %d drained while the burst was sent)", got, queue/size, drained)
	}
	// They left one every size*8/rate = 1 ms.
	span := at[len(at)-1].Sub(start)
	want := time.Duration(float64(got*size*8) / rate * float64(time.Second))
	if span < want*9/10 || span > want*3/2+20*time.Millisecond {
		t.Fatalf("%d packets took %s, want about %s at %.0f bit/s", got, span, want, rate)
	}
}

func TestDelayJitterAndOrder(t *testing.T) {
	r := newRig(t)
	const delay, jitter = 30 * time.Millisecond, 10 * time.Millisecond
	r.link.Set(AtoB, Config{Delay: delay, Jitter: jitter})
	const total = 50
	sent := make([]time.Time, total)
	type arrival struct {
		seq int
		at  time.Time
	}
	arrived := make(chan arrival, total)
	go func() {
		for range total {
			select {
			case pkt := <-r.bIn.in:
				arrived <- arrival{int(pkt[20]), time.Now()}
			case <-time.After(time.Second):
				close(arrived)
				return
			}
		}
	}()
	for i := range total {
		pkt := ipv4(60, 17)
		pkt[20] = byte(i)
		sent[i] = time.Now()
		r.send(t, pkt)
		time.Sleep(2 * time.Millisecond) // spaces the packets, so jitter can show
	}
	delays := make([]time.Duration, 0, total)
	for i := range total {
		a, ok := <-arrived
		if !ok {
			t.Fatalf("packet %d did not arrive", i)
		}
		if a.seq != i {
			t.Fatalf("packet %d arrived as number %d: reordered", a.seq, i)
		}
		delays = append(delays, a.at.Sub(sent[i]))
	}
	slices.Sort(delays)
	lo, median, hi := delays[0], delays[total/2], delays[total-1]
	// A packet never leaves early; a loaded machine can only make timers
	// late, so the upper bound is on the median, not on every packet.
	if lo < delay-jitter || median > delay+jitter+5*time.Millisecond {
		t.Fatalf("delays %s–%s (median %s), want within %s ± %s", lo, hi, median, delay, jitter)
	}
	if hi-lo < jitter {
		t.Fatalf("delays %s–%s vary less than the jitter %s", lo, hi, jitter)
	}
}

func TestBlackholes(t *testing.T) {
	r := newRig(t)
	r.link.Set(AtoB, Config{BlackholeUDP: true})
	udp6 := make([]byte, 48)
	udp6[0], udp6[6] = 0x60, 17
	for _, p := range [][]byte{ipv4(60, 17), udp6, ipv4(60, 6), ipv4(60, 6)} {
		r.send(t, p)
	}
	if got, _ := r.collect(100 * time.Millisecond); got != 2 {
		t.Fatalf("UDP blackhole: %d of 2 TCP packets through", got)
	}
	r.link.Set(AtoB, Config{Blackhole: true})
	r.send(t, ipv4(60, 6))
	r.send(t, ipv4(60, 17))
	if got, _ := r.collect(100 * time.Millisecond); got != 0 {
		t.Fatalf("blackhole: %d packets through", got)
	}
	if s := r.link.Stats(AtoB); s.DroppedBlackhole != 4 {
		t.Fatalf("%d counted as blackholed, want 4", s.DroppedBlackhole)
	}
	// The other direction was never touched.
	if _, err := r.bIn.Write(ipv4(60, 17)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.aOut.in:
	case <-time.After(time.Second):
		t.Fatal("b→a did not pass")
	}
}

// tcp4 is an IPv4 packet carrying a TCP segment with a 20-byte header and
// data bytes of payload.
func tcp4(data int) []byte {
	b := ipv4(40+data, 6)
	binary.BigEndian.PutUint16(b[2:4], uint16(40+data))
	b[20+12] = 5 << 4
	return b
}

// tcp6 is tcp4 over IPv6.
func tcp6(data int) []byte {
	b := make([]byte, 60+data)
	b[0], b[6] = 0x60, 6
	binary.BigEndian.PutUint16(b[4:6], uint16(20+data))
	b[40+12] = 5 << 4
	return b
}

func TestTCPDataBlackholePassesSegmentsWithoutData(t *testing.T) {
	r := newRig(t)
	r.link.Set(AtoB, Config{BlackholeTCPData: true})
	through := [][]byte{tcp4(0), tcp6(0), ipv4(60, 17)}
	for _, p := range append([][]byte{tcp4(1), tcp6(1), tcp4(1400)}, through...) {
		r.send(t, p)
	}
	if got, _ := r.collect(100 * time.Millisecond); got != len(through) {
		t.Fatalf("%d packets through, want the %d without TCP data", got, len(through))
	}
	if s := r.link.Stats(AtoB); s.DroppedBlackhole != 3 {
		t.Fatalf("%d counted as blackholed, want 3", s.DroppedBlackhole)
	}
}

func TestTCPPayload(t *testing.T) {
	options := tcp4(8)
	options[32] = 8 << 4 // a 32-byte TCP header: 12 bytes of options, no data
	for _, c := range []struct {
		name string
		pkt  []byte
		want int
	}{
		{"ipv4 ack", tcp4(0), 0},
		{"ipv4 data", tcp4(100), 100},
		{"ipv6 data", tcp6(7), 7},
		{"ipv4 options", options, 0},
		{"udp", ipv4(60, 17), 0},
		{"truncated", tcp4(100)[:30], 0},
		{"empty", nil, 0},
	} {
		if got := tcpPayload(c.pkt); got != c.want {
			t.Errorf("%s: tcpPayload = %d, want %d", c.name, got, c.want)
		}
	}
}

func FuzzTCPPayload(f *testing.F) {
	for _, p := range [][]byte{tcp4(0), tcp4(10), tcp6(3), ipv4(60, 17)} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if n := tcpPayload(pkt); n < 0 || n > len(pkt) {
			t.Fatalf("tcpPayload = %d for a %d-byte packet", n, len(pkt))
		}
	})
}

func TestCloseEndsRoutines(t *testing.T) {
	r := newRig(t)
	r.link.Set(AtoB, Config{Delay: time.Hour})
	r.send(t, ipv4(60, 6))
	for deadline := time.Now().Add(2 * time.Second); r.link.Stats(AtoB).Packets == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the packet was not read")
		}
		runtime.Gosched()
	}
	done := make(chan error, 1)
	go func() { done <- r.link.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not return with a packet in flight")
	}
	if r.link.CPU() < 0 {
		t.Fatal("negative CPU time")
	}
	if err := r.link.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

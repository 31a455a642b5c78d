//go:build linux

package wan

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/integration/wan/netem"
)

// newBed builds a bed for t and removes it when t ends, checking that the
// namespaces are gone.
func newBed(t *testing.T) *Bed {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("skipped: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := New(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
		for _, n := range []*Namespace{b.A, b.B} {
			if _, err := os.Stat(filepath.Join("/run/netns", n.Name)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("namespace %s still there after Close (%v)", n.Name, err)
			}
		}
	})
	return b
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// udpEcho serves UDP echo on B's address and returns it.
func udpEcho(t *testing.T, b *Bed) string {
	t.Helper()
	var pc net.PacketConn
	err := b.B.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", AddrB+":0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed at cleanup
			}
			_, _ = pc.WriteTo(buf[:n], from) // a lost echo shows as a lost ping
		}
	}()
	return pc.LocalAddr().String()
}

// udpFromA is a UDP socket of A connected to addr.
func udpFromA(t *testing.T, ctx context.Context, b *Bed, addr string) net.Conn {
	t.Helper()
	c, err := b.A.Dial(ctx, "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// pingRTTs sends n pings through c one after the other and returns the
// round-trip times of those answered within wait.
func pingRTTs(c net.Conn, n int, wait time.Duration) []time.Duration {
	var rtts []time.Duration
	buf := make([]byte, 64)
	for i := range n {
		msg := []byte{byte(i), byte(i >> 8), 'p'}
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			continue
		}
		_ = c.SetReadDeadline(start.Add(wait))
		for {
			k, err := c.Read(buf)
			if err != nil {
				break // lost
			}
			if k == len(msg) && buf[0] == msg[0] && buf[1] == msg[1] {
				rtts = append(rtts, time.Since(start))
				break
			}
		}
	}
	return rtts
}

func median(d []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(d))
	return s[len(s)/2]
}

func TestRoundTripTimeIsTheConfiguredDelay(t *testing.T) {
	b := newBed(t)
	ctx := testCtx(t, 30*time.Second)
	c := udpFromA(t, ctx, b, udpEcho(t, b))
	base := pingRTTs(c, 30, time.Second)
	if len(base) < 30 {
		t.Fatalf("%d of 30 pings answered without impairment", len(base))
	}
	for _, oneWay := range []time.Duration{time.Millisecond, 10 * time.Millisecond, 40 * time.Millisecond} {
		b.Link.SetBoth(netem.Config{Delay: oneWay})
		rtts := pingRTTs(c, 30, time.Second)
		if len(rtts) < 30 {
			t.Fatalf("%s one way: %d of 30 pings answered", oneWay, len(rtts))
		}
		got, want := median(rtts), 2*oneWay
		// The emulator's timers and the scheduler add a little (Go's timers
		// wake up to a millisecond late, several under the race detector
		// on a machine busy with other tests), never take away. A delay
		// applied once or twice too often is still far outside.
		if got < want || got > want+want/10+median(base)+5*time.Millisecond {
			t.Errorf("%s one way: median RTT %s, want %s (+ %s unimpaired)", oneWay, got, want, median(base))
		}
		t.Logf("%s one way: median RTT %s (unimpaired %s)", oneWay, got, median(base))
	}
	// Each direction keeps its own delay.
	b.Link.Set(netem.AtoB, netem.Config{Delay: 30 * time.Millisecond})
	b.Link.Set(netem.BtoA, netem.Config{})
	if got := median(pingRTTs(c, 10, time.Second)); got < 30*time.Millisecond || got > 38*time.Millisecond {
		t.Errorf("30 ms a→b, 0 b→a: median RTT %s", got)
	}
}

func TestLossRateOverManyPackets(t *testing.T) {
	b := newBed(t)
	ctx := testCtx(t, 30*time.Second)
	var pc net.PacketConn
	if err := b.B.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", AddrB+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_ = pc.(*net.UDPConn).SetReadBuffer(4 << 20) // what the kernel allows; the pacing below does the rest
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	const loss, total = 0.05, 5000
	b.Link.Set(netem.AtoB, netem.Config{Loss: loss})
	c := udpFromA(t, ctx, b, pc.LocalAddr().String())
	msg := make([]byte, 200)
	for i := range total {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if i%20 == 19 {
			// Paces the sender so that no socket buffer drops for it.
			time.Sleep(time.Millisecond)
		}
	}
	// Wait until the link has read every packet and nothing more arrives.
	for deadline, last, still := time.Now().Add(5*time.Second), int64(-1), 0; still < 3 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if n := got.Load(); n == last && b.Link.Stats(netem.AtoB).Packets >= total {
			still++
		} else {
			last, still = n, 0
		}
	}
	_ = pc.Close()
	<-done
	s := b.Link.Stats(netem.AtoB)
	// A loaded machine may drop a few before the link (the sender's socket
	// or the TUN queue): the loss that counts is of what the link read.
	if s.Packets < total*95/100 {
		t.Fatalf("link saw %d of %d packets", s.Packets, total)
	}
	rate := 1 - float64(got.Load())/float64(s.Packets)
	if sd := math.Sqrt(loss * (1 - loss) / float64(s.Packets)); math.Abs(rate-loss) > 5*sd {
		t.Fatalf("lost %.4f of %d packets, want %.2f ± %.4f; link stats %+v", rate, total, loss, 5*sd, s)
	}
	t.Logf("lost %.4f (configured %.2f), link stats %+v", rate, loss, s)
}

// sinkInB accepts TCP on B and counts what arrives.
func sinkInB(t *testing.T, b *Bed, received *atomic.Int64) string {
	t.Helper()
	ln, err := b.B.Listen(t.Context(), &net.ListenConfig{}, "tcp", AddrB+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at cleanup
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					received.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// bulk sends from A to addr for d after warm and returns the goodput in bits/s.
func bulk(t *testing.T, ctx context.Context, b *Bed, addr string, received *atomic.Int64, warm, d time.Duration) float64 {
	t.Helper()
	c, err := b.A.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(warm + d + 10*time.Second))
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				werr <- nil
				return
			default:
			}
			if _, err := c.Write(buf); err != nil {
				werr <- err
				return
			}
		}
	}()
	time.Sleep(warm) // the measurement window, not synchronisation
	n0, t0 := received.Load(), time.Now()
	time.Sleep(d)
	n1, t1 := received.Load(), time.Now()
	close(stop)
	_ = c.Close()
	if err := <-werr; err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	return float64(n1-n0) * 8 / t1.Sub(t0).Seconds()
}

func TestRateCapHoldsForBulkTCP(t *testing.T) {
	b := newBed(t)
	ctx := testCtx(t, 30*time.Second)
	var received atomic.Int64
	addr := sinkInB(t, b, &received)
	const rate, queue = 20e6, 64 << 10
	b.Link.SetBoth(netem.Config{Delay: 2 * time.Millisecond, RateBits: rate, QueueBytes: queue})
	got := bulk(t, ctx, b, addr, &received, 500*time.Millisecond, 2*time.Second)
	// Goodput is the rate less the IP and TCP headers (52 of 1500 bytes),
	// and a loaded machine may not quite fill it; it never exceeds it.
	if got < 0.7*rate || got > rate {
		t.Fatalf("bulk TCP moved %.1f Mbit/s through a %.0f Mbit/s cap", got/1e6, rate/1e6)
	}
	s := b.Link.Stats(netem.AtoB)
	if s.MaxQueueBytes > queue {
		t.Fatalf("queue reached %d bytes, bound %d", s.MaxQueueBytes, queue)
	}
	t.Logf("%.1f Mbit/s through %.0f Mbit/s; a→b stats %+v; emulator CPU %s", got/1e6, rate/1e6, s, b.Link.CPU())
}

func TestQueueBoundTailDrops(t *testing.T) {
	b := newBed(t)
	ctx := testCtx(t, 30*time.Second)
	echo := udpEcho(t, b)
	const rate, queue = 10e6, 50000 // the queue drains in 40 ms
	const delay = 5 * time.Millisecond
	b.Link.Set(netem.AtoB, netem.Config{Delay: delay, RateBits: rate, QueueBytes: queue})
	flood := udpFromA(t, ctx, b, echo)
	// 1000 packets of 1200 bytes in a burst: ten times what the queue holds.
	msg := make([]byte, 1200)
	for range 1000 {
		if _, err := flood.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	// Once the link has read the burst, a ping waits at most a full queue.
	for deadline := time.Now().Add(5 * time.Second); b.Link.Stats(netem.AtoB).Packets < 1000; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the link read only %d of the 1000 packets", b.Link.Stats(netem.AtoB).Packets)
		}
	}
	ping := udpFromA(t, ctx, b, echo)
	rtts := pingRTTs(ping, 1, time.Second)
	s := b.Link.Stats(netem.AtoB)
	if s.MaxQueueBytes > queue || s.DroppedQueue == 0 {
		t.Fatalf("queue peaked at %d bytes (bound %d), %d tail drops", s.MaxQueueBytes, queue, s.DroppedQueue)
	}
	drain := time.Duration(float64(queue*8) / rate * float64(time.Second))
	// A busy machine's late timers get 50 ms; an unbounded queue would
	// hold the ping behind the whole burst, 960 ms.
	if len(rtts) == 1 && rtts[0] > 2*delay+drain+50*time.Millisecond {
		t.Fatalf("a ping behind a full queue took %s, want at most %s", rtts[0], 2*delay+drain)
	}
	t.Logf("a→b stats %+v, ping behind the burst %v", s, rtts)
}

func TestBlackholes(t *testing.T) {
	b := newBed(t)
	ctx := testCtx(t, 30*time.Second)
	echo := udpEcho(t, b)
	var received atomic.Int64
	sink := sinkInB(t, b, &received)
	u := udpFromA(t, ctx, b, echo)
	tcpWorks := func() bool {
		dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		c, err := b.A.Dial(dctx, "tcp", sink)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}
	udpWorks := func() bool { return len(pingRTTs(u, 3, 200*time.Millisecond)) > 0 }
	for _, tc := range []struct {
		name     string
		ab, ba   netem.Config
		tcp, udp bool
	}{
		{"open", netem.Config{}, netem.Config{}, true, true},
		{"both ways", netem.Config{Blackhole: true}, netem.Config{Blackhole: true}, false, false},
		{"a→b only", netem.Config{Blackhole: true}, netem.Config{}, false, false},
		{"b→a only", netem.Config{}, netem.Config{Blackhole: true}, false, false},
		{"UDP both ways", netem.Config{BlackholeUDP: true}, netem.Config{BlackholeUDP: true}, true, false},
		{"UDP b→a only", netem.Config{}, netem.Config{BlackholeUDP: true}, true, false},
		{"lifted", netem.Config{}, netem.Config{}, true, true},
	} {
		b.Link.Set(netem.AtoB, tc.ab)
		b.Link.Set(netem.BtoA, tc.ba)
		if got := tcpWorks(); got != tc.tcp {
			t.Errorf("%s: TCP connects %v, want %v", tc.name, got, tc.tcp)
		}
		if got := udpWorks(); got != tc.udp {
			t.Errorf("%s: UDP echo answers %v, want %v", tc.name, got, tc.udp)
		}
	}
	if s := b.Link.Stats(netem.AtoB); s.DroppedBlackhole == 0 {
		t.Fatalf("no a→b packet counted as blackholed: %+v", s)
	}
}

func TestProcessesRunInTheNamespaces(t *testing.T) {
	b := newBed(t)
	ctx := testCtx(t, 10*time.Second)
	for _, n := range []*Namespace{b.A, b.B} {
		out, err := n.Command(ctx, "ip", "-o", "-4", "addr", "show", "dev", Device).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", n.Name, err, out)
		}
		if !strings.Contains(string(out), n.Addr+prefix) {
			t.Fatalf("%s: %s has not %s: %s", n.Name, Device, n.Addr, out)
		}
	}
	// A process in B is reached from a socket of A over the link.
	ln, err := b.B.Listen(ctx, &net.ListenConfig{}, "tcp", AddrB+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.WriteString(c, "hello")
			_ = c.Close()
		}
	}()
	c, err := b.A.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	if s := b.Link.Stats(netem.BtoA); s.Delivered == 0 {
		t.Fatal("the connection did not go through the link")
	}
}

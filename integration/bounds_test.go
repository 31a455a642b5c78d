package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	quictransport "github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/wire"
)

// bndIdle opens n TCP connections from ip to addr that send nothing, and
// returns a function that waits for all of them to be closed by the peer
// (or for limit) and reports how long each stayed open.
func bndIdle(t *testing.T, ctx context.Context, ip, addr string, n int, limit time.Duration) func() []time.Duration {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	var mu sync.Mutex
	var open []time.Duration
	var wg sync.WaitGroup
	for range n {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("idle socket from %s: %v", ip, err)
		}
		start := time.Now()
		wg.Go(func() {
			defer c.Close()
			_ = c.SetReadDeadline(start.Add(limit)) // a socket left open shows as a timeout
			_, err := io.Copy(io.Discard, c)
			took := time.Since(start)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				took = limit
			}
			mu.Lock()
			open = append(open, took)
			mu.Unlock()
		})
	}
	return func() []time.Duration {
		wg.Wait()
		return open
	}
}

// bndCount returns how many of ds are at most d, and the longest.
func bndCount(ds []time.Duration, d time.Duration) (n int, longest time.Duration) {
	for _, x := range ds {
		if x <= d {
			n++
		}
		longest = max(longest, x)
	}
	return n, longest
}

// TestIdleTCPSocketsDoNotLockOutTunnels opens 64 TCP sockets that never
// send a byte against a listen side with PQT_MAX_HANDSHAKES=64 and a 10 s
// handshake timeout. From one address, 16 (a quarter) are held and the rest
// refused at once as busy; spread over four addresses they take every slot,
// and each is closed 2 s later for want of a first TLS record. A legitimate
// dial side on the tcp transport connects within 3 s of starting from one
// source; from four, once the first idle sockets are closed and its next
// retry comes: its backoff (200 ms doubling, the upper half jittered) can
// have just tried at 1.5-1.9 s and wait up to 3.2 s, so within 6 s. Both
// are well under the 10 s the idle sockets would hold the slots for.
func TestIdleTCPSocketsDoNotLockOutTunnels(t *testing.T) {
	const idle, slots, handshakeTimeout = 64, 64, 10 * time.Second
	ctx := testContext(t, 90*time.Second)
	o := startEcho(t)
	lm := metAddr(t)
	l := startListen(t, ctx, 0, "tcp", map[string]string{
		"PQT_TARGET":            o.addr(),
		"PQT_HANDSHAKE_TIMEOUT": handshakeTimeout.String(),
		"PQT_MAX_HANDSHAKES":    "64",
		"PQT_METRICS":           lm,
	})
	baseG := metGoroutines(t, ctx, "listen side", lm)
	connected := msgIs("tunnel connected", "transport", "tcp", "group", "X25519MLKEM768")
	limit := handshakeTimeout + 2*time.Second

	for _, phase := range []struct {
		name    string
		sources []string
		busy    int           // refused at once
		within  time.Duration // the dial side connects
	}{
		{"one source", []string{"127.0.0.2"}, idle - slots/4, 3 * time.Second},
		{"four sources", []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}, 0, 6 * time.Second},
	} {
		t.Run(phase.name, func(t *testing.T) {
			before := metAwait(t, ctx, "listen side", lm, 5*time.Second, func(metSet) error { return nil })
			busyBefore, _ := before.value("pqtunnel_handshake_failures_total", "reason", "busy")
			timeoutBefore, _ := before.value("pqtunnel_handshake_failures_total", "reason", "timeout")
			var waits []func() []time.Duration
			for _, ip := range phase.sources {
				waits = append(waits, bndIdle(t, ctx, ip, l.tunnelAddr, idle/len(phase.sources), limit))
			}
			attackStart := time.Now()
			dial := startDial(t, ctx, l.tunnelAddr, "tcp", nil, map[string]string{"PQT_CONNECTIONS": "1"})
			start := time.Now() // the dial side is up and dialling
			dial.waitLog(t, within(t, ctx, 15*time.Second), connected)
			took := time.Since(start)
			t.Logf("%d idle sockets from %d source(s): the dial side connected %s after it started, %s after the sockets were opened",
				idle, len(phase.sources), took.Round(time.Millisecond), time.Since(attackStart).Round(time.Millisecond))
			if took > phase.within {
				t.Errorf("the dial side connected after %s, want within %s", took.Round(time.Millisecond), phase.within)
			}
			if err := echoExact(within(t, ctx, 10*time.Second), dial.forward[""], randomBytes(91, 64<<10)); err != nil {
				t.Errorf("traffic beside the idle sockets: %v", err)
			}
			var open []time.Duration
			for _, w := range waits {
				open = append(open, w()...)
			}
			atOnce, _ := bndCount(open, time.Second)
			byDeadline, longest := bndCount(open, 3*time.Second)
			t.Logf("idle sockets: %d closed within 1s, %d within 3s, longest open %s", atOnce, byDeadline, longest.Round(time.Millisecond))
			if atOnce != phase.busy || byDeadline != idle {
				t.Errorf("%d idle sockets closed at once and %d within 3s (longest %s); want %d at once and all %d within 3s",
					atOnce, byDeadline, longest.Round(time.Millisecond), phase.busy, idle)
			}
			metAwait(t, ctx, "listen side", lm, 5*time.Second, func(m metSet) error {
				return metAll(
					// The dial side's own attempts while every slot is taken add to busy.
					metExpect(m, true, busyBefore+float64(phase.busy), "pqtunnel_handshake_failures_total", "reason", "busy"),
					metExpect(m, false, timeoutBefore+float64(idle-phase.busy), "pqtunnel_handshake_failures_total", "reason", "timeout"),
				)
			})
			dial.signal(t, syscall.SIGTERM)
			dial.wait(t, within(t, ctx, 15*time.Second))
		})
	}
	metSettle(t, ctx, "listen side", lm, baseG, 10, 10*time.Second)
}

// bndStalledQUIC starts a QUIC handshake from a new socket on ip that
// stalls after the server's first flight: the client certificate is asked
// for and never given, until unhold is closed. It reports the Dial error.
func bndStalledQUIC(ctx context.Context, ip, addr string, unhold <-chan struct{}, reached *bndArrivals, refused *atomic.Int64, done chan<- error) {
	began := time.Now()
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		done <- err
		return
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		done <- err
		return
	}
	tr := &quic.Transport{Conn: pc}
	defer pc.Close()
	defer tr.Close()
	conf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519MLKEM768},
		InsecureSkipVerify: true, // the peer is not what is tested
		NextProtos:         []string{wire.ALPN},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			reached.add(began) // the listen side's first flight arrived
			<-unhold
			return nil, errors.New("released")
		},
	}
	conn, err := tr.Dial(ctx, raddr, conf, &quic.Config{HandshakeIdleTimeout: time.Minute})
	if te, ok := errors.AsType[*quic.TransportError](err); ok && te.Remote && te.ErrorCode == quic.ConnectionRefused {
		refused.Add(1)
	}
	if err == nil {
		_ = conn.CloseWithError(0, "") // it should not exist
		err = errors.New("handshake completed")
	}
	done <- err
}

// bndArrivals records, for each stalled attacker whose first flight arrived,
// when it began and when the first flight arrived.
type bndArrivals struct {
	mu    sync.Mutex
	spans [][2]time.Time
}

func (a *bndArrivals) add(began time.Time) {
	a.mu.Lock()
	a.spans = append(a.spans, [2]time.Time{began, time.Now()})
	a.mu.Unlock()
}

func (a *bndArrivals) load() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return int64(len(a.spans))
}

// surelyHeld is the most handshakes the listen side certainly held at one
// moment. Its slot for an attacker is taken on a packet sent after the
// attacker began, so not before, and held until the attacker has been
// silent for hold at least (a stalled attacker sends nothing more, and the
// listen side ends its handshake then); the first flight arrives while it
// is held. The slot is therefore surely held from the first flight's
// arrival to hold after the attacker began.
func (a *bndArrivals) surelyHeld(hold time.Duration) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	most := 0
	for _, at := range a.spans {
		n := 0
		for _, s := range a.spans {
			if !s[1].After(at[1]) && !at[1].After(s[0].Add(hold)) {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}

// bndPeak samples the listen side's go_goroutines and RSS until ctx ends
// and returns the highest of each.
func bndPeak(t *testing.T, ctx context.Context, lm string, pid int) (goroutines int, rss int64) {
	t.Helper()
	metPoll(ctx, 100*time.Millisecond, func() bool {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if m, _, err := metScrape(rctx, lm); err == nil {
			if v, ok := m.value("go_goroutines"); ok {
				goroutines = max(goroutines, int(v))
			}
		}
		rss = max(rss, hosRSS(t, pid))
		return false
	})
	return goroutines, rss
}

// TestStalledQUICHandshakesAreBounded starts 1,000 QUIC handshakes from
// eight source addresses that stall after the listen side's first flight.
// Each takes a handshake slot with its first packet, so at most
// PQT_MAX_HANDSHAKES=64 are held, the rest refused at once as busy; the
// held ones end within PQT_HANDSHAKE_TIMEOUT; every one is counted; the
// listen side's goroutines and RSS stay bounded; and a legitimate dial side
// started during the attack connects.
func TestStalledQUICHandshakesAreBounded(t *testing.T) {
	const (
		attempts         = 1000
		handshakeTimeout = 4 * time.Second
		sources          = 8
	)
	ctx := testContext(t, 240*time.Second)
	o := startEcho(t)
	lm := metAddr(t)
	l := startListen(t, ctx, 0, "quic", map[string]string{
		"PQT_TARGET":            o.addr(),
		"PQT_HANDSHAKE_TIMEOUT": handshakeTimeout.String(),
		"PQT_MAX_HANDSHAKES":    "64",
		"PQT_METRICS":           lm,
	})
	pid := l.cmd.Process.Pid
	baseG := metGoroutines(t, ctx, "listen side", lm)
	baseRSS := hosRSS(t, pid)

	unhold := make(chan struct{})
	done := make(chan error, attempts)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		select {
		case <-unhold:
		default:
			close(unhold)
		}
		wg.Wait()
	})
	actx := within(t, ctx, 120*time.Second)
	peakCtx, stopPeak := context.WithCancel(ctx)
	peak := make(chan [2]int64, 1)
	go func() {
		g, rss := bndPeak(t, peakCtx, lm, pid)
		peak <- [2]int64{int64(g), rss}
	}()
	attackStart := time.Now()
	var reached bndArrivals
	var refused atomic.Int64
	for i := range attempts {
		ip := net.IPv4(127, 0, 0, byte(2+i%sources)).String()
		wg.Go(func() { bndStalledQUIC(actx, ip, l.tunnelAddr, unhold, &reached, &refused, done) })
		if i%100 == 99 {
			time.Sleep(50 * time.Millisecond) // paces the burst over half a second, as a flood from many clients
		}
	}

	dialStart := time.Now()
	dial := startDial(t, ctx, l.tunnelAddr, "quic", nil, map[string]string{"PQT_CONNECTIONS": "1"})
	dial.waitLog(t, within(t, ctx, handshakeTimeout+10*time.Second), msgIs("tunnel connected", "transport", "quic", "group", "X25519MLKEM768"))
	connectedAfter := time.Since(dialStart)
	if err := echoExact(within(t, ctx, 10*time.Second), dial.forward[""], randomBytes(92, 64<<10)); err != nil {
		t.Errorf("traffic during the attack: %v", err)
	}

	// Every attempt that reached the listen side is counted: refused at
	// once, or ended at the timeout. Under load some Initials are lost and
	// sent again later, so the count is awaited; a lost refusal may make
	// one attempt count twice.
	var busy, timeout, total float64
	var failures string
	lastSeen, lastChange := int64(-1), time.Now()
	metPoll(within(t, ctx, 90*time.Second), 200*time.Millisecond, func() bool {
		m, _, err := metScrape(ctx, lm)
		if err != nil {
			return false
		}
		failures = m.describe("pqtunnel_handshake_failures_total")
		busy, _ = m.value("pqtunnel_handshake_failures_total", "reason", "busy")
		timeout, _ = m.value("pqtunnel_handshake_failures_total", "reason", "timeout")
		total, _ = m.value("pqtunnel_handshake_failures_total")
		if seen := reached.load() + refused.Load(); seen != lastSeen {
			lastSeen, lastChange = seen, time.Now()
		}
		// Done when every attempt is counted, or when the attackers have
		// seen nothing new for two timeouts and all they saw is counted.
		return total >= attempts || time.Since(lastChange) > 2*handshakeTimeout && total >= float64(lastSeen)
	})
	stopPeak()
	p := <-peak
	t.Logf("%d stalled QUIC handshakes: %s; listen side go_goroutines %d -> peak %d, RSS %d -> peak %d MiB; dial side connected after %s (attack began %s before)",
		attempts, failures, baseG, p[0], baseRSS>>20, p[1]>>20, connectedAfter.Round(time.Millisecond), dialStart.Sub(attackStart).Round(time.Millisecond))
	seen := reached.load() + refused.Load()
	t.Logf("the attackers saw %d refusals and %d first flights", refused.Load(), reached.load())
	// A loaded listen side (its first flights cost an ML-DSA signature)
	// drops Initials, which attackers send again ever more slowly: only
	// those it answered are sure to be counted within the test.
	// Attackers see a refusal only when the slots are full; a heavily
	// loaded listen side may answer first flights more slowly than they
	// time out, and then none is refused.
	// A silent client's handshake ends after SilenceTimeout, half of
	// PQT_HANDSHAKE_TIMEOUT, so that is all a slot is sure to be held for.
	held := reached.surelyHeld(quictransport.SilenceTimeout(handshakeTimeout))
	t.Logf("at one moment the listen side surely held %d stalled handshakes (slots: 64)", held)
	if total < float64(seen) || timeout < 1 || refused.Load() > 0 && busy < 1 {
		t.Errorf("%g failures counted (%g busy, %g timeout) for %d attempts refused or answered (%d refused); want every one counted, some at the timeout, the refusals as busy",
			total, busy, timeout, seen, refused.Load())
	}
	if held > 64 {
		t.Errorf("the listen side held %d stalled handshakes at once, more than its 64 slots", held)
	}
	if int(p[0]) > baseG+400 {
		t.Errorf("listen side go_goroutines peaked at %d (baseline %d), want at most %d", p[0], baseG, baseG+400)
	}
	// Before handshakes took slots from the first packet, the growth was
	// about 100 MiB (350 MiB with -race, whose shadow memory inflates RSS).
	rssBound := int64(40)
	if raceEnabled {
		rssBound = 200
	}
	if grew := (p[1] - baseRSS) >> 20; grew > rssBound {
		t.Errorf("listen side RSS grew by %d MiB during the attack, want at most %d", grew, rssBound)
	}
	close(unhold)
	wg.Wait()
	dial.signal(t, syscall.SIGTERM)
	dial.wait(t, within(t, ctx, 15*time.Second))
	metSettle(t, ctx, "listen side", lm, baseG, 10, 15*time.Second)
}

// TestMemoryFloodIntoASlowOriginIsBounded pushes as fast as it can over
// 1,000 streams of one tunnel connection into an origin that reads nothing:
// the listen side holds no more than its per-connection memory bound
// (PQT_MAX_CONN_MEMORY=64MiB here) in receive windows, so its RSS stays
// under that plus a fixed allowance, on both transports. The dial side
// keeps to that one connection (PQT_MAX_CONNECTIONS=1): the bound is per
// connection, and extra ones would each bring their own.
func TestMemoryFloodIntoASlowOriginIsBounded(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		const (
			// Over TCP the listen side takes at most 127 of them at once;
			// before it had a bound, each was granted 256 KiB of window or more.
			streams   = 1000
			perStream = 1 << 20 // each visitor's push, which the kernel buffers mostly hold
			flood     = 6 * time.Second
		)
		ctx := testContext(t, 90*time.Second)
		release := make(chan struct{})
		o := startOrigin(t, func(c *net.TCPConn) {
			// A small fixed receive buffer, so that the kernel holds little
			// of what the listen side cannot deliver.
			_ = c.SetReadBuffer(32 << 10)
			select {
			case <-release:
			case <-ctx.Done():
			}
		})
		t.Cleanup(func() {
			select {
			case <-release:
			default:
				close(release)
			}
		})
		p := startPair(t, ctx, pairOptions{
			transport: transport, target: o.addr(), binary: memoryBinary(t),
			dialEnv:   map[string]string{"PQT_CONNECTIONS": "1", "PQT_MAX_CONNECTIONS": "1"},
			listenEnv: map[string]string{"PQT_MAX_CONN_MEMORY": "64MiB"},
		})
		pid := p.listen.cmd.Process.Pid
		baseRSS := hosRSS(t, pid)

		fctx, stop := context.WithTimeout(ctx, flood)
		defer stop()
		var pushed atomic.Int64
		var wg sync.WaitGroup
		for range streams {
			wg.Go(func() {
				c, err := dialClient(fctx, p.dial.forward[""])
				if err != nil {
					return
				}
				defer c.Close()
				buf := make([]byte, 64<<10)
				for range perStream / len(buf) {
					n, err := c.Write(buf)
					pushed.Add(int64(n))
					if err != nil {
						return // the flood is over, or the stream was refused
					}
				}
				_, _ = io.Copy(io.Discard, c) // holds the stream open until the flood is over
			})
		}
		peakRSS := baseRSS
		metPoll(fctx, 100*time.Millisecond, func() bool {
			peakRSS = max(peakRSS, hosRSS(t, pid))
			return false
		})
		wg.Wait()
		// The bound holds the windows; the allowance covers yamux's and
		// quic-go's per-stream state, the copy buffers and the garbage
		// collector's slack. Without the bound, TCP grew by about 120 MiB.
		allowance := int64(64+24) << 20
		grew := peakRSS - baseRSS
		t.Logf("%s: %d streams pushed %d MiB in %s; listen side RSS %d -> peak %d MiB (grew %d MiB, allowed %d)",
			transport, streams, pushed.Load()>>20, flood, baseRSS>>20, peakRSS>>20, grew>>20, allowance>>20)
		if grew > allowance {
			t.Errorf("listen side RSS grew by %d MiB, want at most %d", grew>>20, allowance>>20)
		}
		if p.listen.exited() || p.dial.exited() {
			t.Error("a side exited under the flood")
		}
		close(release)
	})
}

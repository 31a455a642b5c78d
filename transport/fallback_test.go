package transport_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/logtest"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// acceptAll accepts and closes sessions on ln until it closes.
func acceptAll(t *testing.T, ln transport.Listener) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			s, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = s.Close() })
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
}

func TestFallbackListensOnBothWithOnePort(t *testing.T) {
	prim, sec := transporttest.NewBlockable(), memtransport.New()
	_, sc := transporttest.Configs(t)
	ln, err := transport.Fallback(prim, sec).Listen("127.0.0.1:0", sc)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	parts := transport.Parts(ln)
	if len(parts) != 2 || parts[0].Transport() != "mem" || ln.Transport() != transport.FallbackName {
		t.Fatalf("parts %v of a %s listener", parts, ln.Transport())
	}
	if parts[0].Addr().String() != parts[1].Addr().String() || ln.Addr().String() != parts[0].Addr().String() {
		t.Errorf("addresses %v and %v, listener %v: want one port", parts[0].Addr(), parts[1].Addr(), ln.Addr())
	}
}

func TestFallbackFallsBackAndMovesBack(t *testing.T) {
	prim, sec := transporttest.NewBlockable(), memtransport.New()
	f := transport.Fallback(prim, sec)
	if !transport.UsesUDP(f) {
		t.Error("a fallback with a UDP primary does not say it uses UDP")
	}
	cc, sc := transporttest.Configs(t)
	ln := transporttest.Listen(t, f, sc)
	acceptAll(t, ln)

	var logs logtest.Recorder
	cc.Logger = slog.New(&logs)
	cc.FallbackTimeout = 200 * time.Millisecond
	cc.RetryPrimary = 50 * time.Millisecond
	prim.Blocked.Store(true)
	start := time.Now()
	s, err := f.Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer s.Close()
	if d := time.Since(start); d < 200*time.Millisecond || d > 5*time.Second {
		t.Errorf("fell back after %v, want about FallbackTimeout", d)
	}
	if !logs.Contains("fakeudp handshake timed out, falling back to mem", "peer="+ln.Addr().String(), "after=200ms") {
		t.Errorf("no fallback warning; logs: %q", logs.All())
	}
	next := transport.Superseded(s)
	if next == nil {
		t.Fatal("a session carried by the secondary offers no successor")
	}
	select {
	case n := <-next:
		_ = n.Session.Close()
		t.Fatal("a successor was offered while the primary is blocked")
	case <-time.After(300 * time.Millisecond):
	}
	if !logs.Contains("fakeudp still unavailable, staying on mem") {
		t.Errorf("no retry was logged; logs: %q", logs.All())
	}

	prim.Blocked.Store(false)
	select {
	case n := <-next:
		defer n.Session.Close()
		if n.Why != "fakeudp works again: moving tunnel back from mem" {
			t.Errorf("Why = %q", n.Why)
		}
		if n.Session.Info().Peer.Name == "" {
			t.Error("the successor is not authenticated")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no successor after the primary works again")
	}
}

// Only a timeout falls back: a refusal says the peer is there and does
// not want us, and the secondary would say the same.
func TestFallbackDoesNotFallBackOnRefusal(t *testing.T) {
	prim, sec := transporttest.NewBlockable(), memtransport.New()
	cc, _ := transporttest.Configs(t)
	var logs logtest.Recorder
	cc.Logger = slog.New(&logs)
	s, err := transport.Fallback(prim, sec).Dial(transporttest.Ctx(t), "127.0.0.1:9", cc)
	if err == nil {
		_ = s.Close()
		t.Fatal("Dial to nowhere succeeded")
	}
	var he *transport.HandshakeError
	if !errors.As(err, &he) || he.Stage != transport.StageConnect || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Dial error %v (%+v), want the primary's refusal", err, he)
	}
	if len(logs.All()) != 0 {
		t.Errorf("logged %q for a refusal", logs.All())
	}
}

// dialFallenBack dials a fallback of prim, blocked, and sec, with the
// fallback timeout and retry interval given: the session it returns is
// carried by sec and retries prim. It returns the listener and the
// client's configuration too.
func dialFallenBack(t *testing.T, prim *transporttest.Blockable, sec transport.Transport, timeout, retry time.Duration) (transport.Session, transport.Listener, *transport.Config) {
	t.Helper()
	f := transport.Fallback(prim, sec)
	cc, sc := transporttest.Configs(t)
	ln := transporttest.Listen(t, f, sc)
	acceptAll(t, ln)
	cc.FallbackTimeout = timeout
	cc.RetryPrimary = retry
	prim.Blocked.Store(true)
	s, err := f.Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	return s, ln, cc
}

// Closing a session that waits for its primary stops the retries.
func TestFallbackSessionCloseStopsRetry(t *testing.T) {
	prim := transporttest.NewBlockable()
	s, _, _ := dialFallenBack(t, prim, memtransport.New(), 100*time.Millisecond, 20*time.Millisecond)
	<-prim.Tried // the first dial
	<-prim.Tried // a retry is under way; goleak checks Close ends it
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for a retry to time out")
	}
	if _, ok := transport.SessionStats(s); ok {
		t.Error("a memtransport session behind a fallback reports stats")
	}
}

// On port 0 the secondary takes the primary's port number; when another
// process holds that number on the secondary's protocol, Listen looks for
// another pair instead of failing.
func TestFallbackListenRetriesAPortTakenOnTheSecondary(t *testing.T) {
	prim, sec := memtransport.New(), memtransport.New()
	_, sc := transporttest.Configs(t)
	// prim hands out ports 1, 2, 3 …; 1 and 2 are taken on sec.
	for _, a := range []string{"127.0.0.1:1", "127.0.0.1:2"} {
		held, err := sec.Listen(a, sc)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
	}
	ln, err := transport.Fallback(prim, sec).Listen("127.0.0.1:0", sc)
	if err != nil {
		t.Fatalf("listen with ports 1 and 2 taken on the secondary: %v", err)
	}
	defer ln.Close()
	parts := transport.Parts(ln)
	if got := ln.Addr().String(); got != "127.0.0.1:3" || parts[0].Addr().String() != parts[1].Addr().String() {
		t.Errorf("listening on %v and %v, want both on 127.0.0.1:3", parts[0].Addr(), parts[1].Addr())
	}
}

// A peer whose UDP port answers ICMP port unreachable has nothing on QUIC:
// auto moves to TCP at once instead of after FallbackTimeout, and a plain
// QUIC dial fails at once with the reason port_unreachable.
func TestFallbackMovesAtOnceOnPortUnreachable(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	ln := transporttest.Listen(t, tlsmux.Transport{}, sc) // TCP only: nothing on the UDP port
	acceptAll(t, ln)
	var logs logtest.Recorder
	cc.Logger = slog.New(&logs)
	cc.FallbackTimeout = 10 * time.Second
	addr := ln.Addr().String()

	start := time.Now()
	_, err := quic.Transport{}.Dial(transporttest.Ctx(t), addr, cc)
	var he *transport.HandshakeError
	if !errors.As(err, &he) || he.Reason != transport.ReasonPortUnreachable || he.Stage != transport.StageConnect || !errors.Is(err, transport.ErrPortUnreachable) {
		t.Fatalf("QUIC dial of a closed UDP port: %v (%+v), want port_unreachable at connect", err, he)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("QUIC dial of a closed UDP port failed after %v, want at once", d)
	}

	start = time.Now()
	s, err := transport.Fallback(quic.Transport{}, tlsmux.Transport{}).Dial(transporttest.Ctx(t), addr, cc)
	if err != nil {
		t.Fatalf("auto dial: %v", err)
	}
	defer s.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("auto reached TCP after %v, want at once, not after FallbackTimeout (10s)", d)
	}
	if s.Info().Transport != tlsmux.Name {
		t.Errorf("auto session over %s, want %s", s.Info().Transport, tlsmux.Name)
	}
	if !logs.Contains("quic port unreachable, falling back to tcp", "peer="+addr) {
		t.Errorf("no fallback warning; logs: %q", logs.All())
	}
}

// lossyPrimary is a primary transport whose first session reports packet
// counts that grow by 2000 sent per look, and by lost more lost, while the
// others stay idle; every session answers loss probes with answered of
// every 1000.
type lossyPrimary struct {
	*transporttest.Blockable
	lost, answered atomic.Int64
	dials          atomic.Int32
}

func (p *lossyPrimary) Dial(ctx context.Context, addr string, c *transport.Config) (transport.Session, error) {
	s, err := p.Blockable.Dial(ctx, addr, c)
	if err != nil {
		return nil, err
	}
	return &lossySession{Session: s, p: p, busy: p.dials.Add(1) == 1}, nil
}

type lossySession struct {
	transport.Session
	p          *lossyPrimary
	busy       bool
	sent, lost atomic.Uint64
}

func (s *lossySession) Stats() transport.Stats {
	if !s.busy {
		return transport.Stats{PacketsSent: s.sent.Add(1)}
	}
	return transport.Stats{PacketsSent: s.sent.Add(2000), PacketsLost: s.lost.Add(uint64(s.p.lost.Load()))}
}

func (s *lossySession) ProbeLoss(ctx context.Context, n int, every time.Duration) (int, int, error) {
	return n, n * int(s.p.answered.Load()) / 1000, nil
}

// A session on the primary that loses packets at random moves to the
// secondary within the loss watch's window, saying why with its figures,
// and an idle one to the same peer follows it; a new dial goes to the
// secondary at once. The secondary's session tries the primary again and
// moves back only once a trial loses less than FallbackLoss of its probes.
func TestFallbackMovesOnLossAndBackWhenItEnds(t *testing.T) {
	prim := &lossyPrimary{Blockable: transporttest.NewBlockable()}
	prim.answered.Store(980)
	f := transport.Fallback(prim, memtransport.New())
	cc, sc := transporttest.Configs(t)
	ln := transporttest.Listen(t, f, sc)
	acceptAll(t, ln)
	var logs logtest.Recorder
	cc.Logger = slog.New(&logs)
	cc.RetryPrimary = 200 * time.Millisecond
	s, err := f.Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	next := transport.Superseded(s)
	if next == nil || s.Info().Transport != "mem" {
		t.Fatalf("the primary's session (%s) offers no successor", s.Info().Transport)
	}
	idle, err := f.Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	select {
	case n := <-next:
		_ = n.Session.Close()
		t.Fatal("moved off a primary that loses nothing")
	case <-time.After(2500 * time.Millisecond):
	}
	prim.lost.Store(20) // 1 %, every second
	start := time.Now()
	var moved transport.Succession
	select {
	case moved = <-next:
	case <-time.After(20 * time.Second):
		t.Fatal("no move in 20 s at 1 % loss")
	}
	defer moved.Session.Close()
	if took := time.Since(start); took > 12*time.Second {
		t.Errorf("moved %s after the loss began, want within the 10 s window", took)
	}
	if moved.Reason != transport.MoveLoss || moved.Why != "fakeudp loses packets at random, which holds its loss-based congestion control down: moving tunnel to mem" {
		t.Errorf("move for %q: %q", moved.Reason, moved.Why)
	}
	attrs := map[any]any{}
	for i := 0; i+1 < len(moved.Attrs); i += 2 {
		attrs[moved.Attrs[i]] = moved.Attrs[i+1]
	}
	if loss, _ := attrs["loss"].(float64); loss < 0.5 || loss > 1 || attrs["direction"] != "sent" || attrs["lost"] == nil {
		t.Errorf("move figures %v", moved.Attrs)
	}
	select {
	case follow := <-transport.Superseded(idle):
		_ = follow.Session.Close()
		if follow.Reason != transport.MoveLoss || !slices.Contains(follow.Attrs, any("judged_by")) {
			t.Errorf("the idle session moved for %q with %v", follow.Reason, follow.Attrs)
		}
	case <-time.After(3 * time.Second):
		t.Error("the idle session to the same peer did not follow")
	}
	late, err := f.Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err != nil {
		t.Fatal(err)
	}
	_ = late.Close()
	if !logs.Contains("fakeudp lost packets at random on this path: dialling mem") {
		t.Errorf("a dial to the lossy path did not go to the secondary at once; logs: %q", logs.All())
	}
	back := transport.Superseded(moved.Session)
	if back == nil {
		t.Fatal("the secondary's session offers no way back")
	}
	select {
	case n := <-back:
		_ = n.Session.Close()
		t.Fatal("moved back while a trial of the primary loses 2 % of its probes")
	case <-time.After(time.Second):
	}
	if !logs.Contains("fakeudp still loses packets, staying on mem", "probes=1000", "answered=980") {
		t.Errorf("no lossy trial was logged; logs: %q", logs.All())
	}
	prim.lost.Store(0)
	prim.answered.Store(1000)
	select {
	case n := <-back:
		defer n.Session.Close()
		if n.Reason != transport.MoveBack || transport.Superseded(n.Session) == nil {
			t.Errorf("moved back for %q, watched: %v", n.Reason, transport.Superseded(n.Session) != nil)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no move back once the primary's probes come back")
	}
}

// With the loss watch off a primary's session is not watched.
func TestFallbackLossWatchOff(t *testing.T) {
	prim := &lossyPrimary{Blockable: transporttest.NewBlockable()}
	f := transport.Fallback(prim, memtransport.New())
	cc, sc := transporttest.Configs(t)
	ln := transporttest.Listen(t, f, sc)
	acceptAll(t, ln)
	cc.FallbackLoss = -1
	s, err := f.Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if transport.Superseded(s) != nil {
		t.Error("a primary's session is watched with FallbackLoss negative")
	}
}

// supersedingTransport is a transport whose sessions offer whatever is
// sent on offer as their successor, as a tcp session whose path's RTT grew
// does.
type supersedingTransport struct {
	transport.Transport
	offer chan transport.Succession
}

func (t *supersedingTransport) Dial(ctx context.Context, addr string, c *transport.Config) (transport.Session, error) {
	s, err := t.Transport.Dial(ctx, addr, c)
	if err != nil {
		return nil, err
	}
	return &supersedingSession{Session: s, next: t.offer}, nil
}

type supersedingSession struct {
	transport.Session
	next chan transport.Succession
}

func (s *supersedingSession) Superseded() <-chan transport.Succession { return s.next }

// A session carried by the secondary passes on the successor its own
// session offers, with its reason, and the successor keeps looking for the
// primary: it moves back once the primary works.
func TestFallbackPassesOnTheSecondarysOwnSuccessor(t *testing.T) {
	prim := transporttest.NewBlockable()
	mem := memtransport.New()
	sec := &supersedingTransport{Transport: mem, offer: make(chan transport.Succession, 1)}
	s, ln, cc := dialFallenBack(t, prim, sec, 200*time.Millisecond, 50*time.Millisecond)
	defer s.Close()
	successor, err := mem.Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err != nil {
		t.Fatalf("dial the successor: %v", err)
	}
	sec.offer <- transport.Succession{Session: successor, Why: "the path's RTT grew", Reason: transport.MoveRTTGrew}
	var n transport.Succession
	select {
	case n = <-transport.Superseded(s):
		defer n.Session.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the secondary's successor was not passed on")
	}
	if n.Reason != transport.MoveRTTGrew || n.Why != "the path's RTT grew" {
		t.Errorf("passed on %q (%s), want the secondary's own reason", n.Why, n.Reason)
	}
	prim.Blocked.Store(false)
	select {
	case m := <-transport.Superseded(n.Session):
		_ = m.Session.Close()
		if m.Reason != transport.MoveBack {
			t.Errorf("the successor moved for %s, want %s", m.Reason, transport.MoveBack)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the successor did not move back once the primary works")
	}
}

package transport_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/logtest"
	"github.com/pqtunnel/pqtunnel/transport"
)

// stubSession is a session that only counts its Close.
type stubSession struct {
	transport.Session
	closed atomic.Bool
}

func (s *stubSession) Close() error { s.closed.Store(true); return nil }

// A session whose RTT grew to twice the one it came up over plus 20 ms for
// RTTGrewChecks quiet checks in a row dials a successor, and offers it
// only when the successor came up over a grown RTT too; one not offered is
// closed, and as many more grown checks try again. A check below the bar
// starts the count over; a busy one neither counts nor starts it over.
func TestRTTGrowthOffersASuccessorThatMeasuredTheGrownPath(t *testing.T) {
	var logs logtest.Recorder
	var dials atomic.Int32
	var successorRTT atomic.Int64
	var dialled []*stubSession
	var mu sync.Mutex
	redial := func(context.Context) (transport.Session, error) {
		dials.Add(1)
		s := &stubSession{}
		mu.Lock()
		dialled = append(dialled, s)
		mu.Unlock()
		return s, nil
	}
	measure := func(transport.Session) time.Duration { return time.Duration(successorRTT.Load()) }
	g := transport.NewRTTGrowth("mem", 10*time.Millisecond, redial, measure, slog.New(&logs))
	done := make(chan struct{})
	defer close(done)
	var wg sync.WaitGroup
	check := func(rtt time.Duration, n int) {
		for range n {
			g.Check(rtt, 0, false, done, &wg)
		}
		wg.Wait()
	}

	short := transport.RTTGrewChecks - 1
	check(39*time.Millisecond, 8) // under 2 × 10 + 20 ms
	check(40*time.Millisecond, short)
	check(39*time.Millisecond, 1) // starts the count over
	check(40*time.Millisecond, short)
	for range 8 { // the connection's own traffic: neither counts nor starts over
		g.Check(90*time.Millisecond, 0, true, done, &wg)
	}
	if n := dials.Load(); n != 0 {
		t.Fatalf("%d successors dialled before %d grown checks in a row", n, transport.RTTGrewChecks)
	}
	successorRTT.Store(int64(12 * time.Millisecond)) // a busy machine's RTT, not the path's
	check(40*time.Millisecond, 1)
	if n := dials.Load(); n != 1 || !dialled[0].closed.Load() {
		t.Fatalf("%d successors dialled (the first closed: %v), want one, closed", n, len(dialled) > 0 && dialled[0].closed.Load())
	}
	select {
	case n := <-g.Superseded():
		t.Fatalf("a successor that came up over the old RTT was offered: %+v", n)
	default:
	}
	check(80*time.Millisecond, short)
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d successors dialled, want no second before %d more grown checks", n, transport.RTTGrewChecks)
	}
	successorRTT.Store(int64(80 * time.Millisecond))
	check(80*time.Millisecond, 1)
	select {
	case n := <-g.Superseded():
		if n.Reason != transport.MoveRTTGrew || n.Session != transport.Session(dialled[1]) || dialled[1].closed.Load() {
			t.Errorf("offered %+v, want the second successor, open, for %s", n, transport.MoveRTTGrew)
		}
	default:
		t.Fatalf("no successor offered after %d dials", dials.Load())
	}
	check(80*time.Millisecond, 8)
	if n := dials.Load(); n != 2 {
		t.Errorf("%d successors dialled after one was offered, want no more", n)
	}
}

// Check counts the checks in a row, busy or quiet, that found the RTT
// grown, while only quiet ones lead to a dial; without a redial it counts
// the same and offers nothing.
func TestRTTGrowthCountsGrownChecksBusyOrNot(t *testing.T) {
	var dials atomic.Int32
	redial := func(context.Context) (transport.Session, error) {
		dials.Add(1)
		return nil, errors.New("test: no successor")
	}
	measure := func(transport.Session) time.Duration { return time.Second }
	g := transport.NewRTTGrowth("mem", 10*time.Millisecond, redial, measure, slog.New(&logtest.Recorder{}))
	counter := transport.NewRTTGrowth("mem", 10*time.Millisecond, nil, nil, slog.New(&logtest.Recorder{}))
	var wg sync.WaitGroup
	for i, c := range []struct {
		rtt  time.Duration
		busy bool
		want int
	}{
		{40 * time.Millisecond, true, 1},
		{40 * time.Millisecond, false, 2},
		{40 * time.Millisecond, true, 3},
		{39 * time.Millisecond, false, 0}, // starts over
		{40 * time.Millisecond, true, 1},
		{40 * time.Millisecond, true, 2},
		{40 * time.Millisecond, false, 3},
		{40 * time.Millisecond, true, 4},
		{40 * time.Millisecond, true, 5},
		{40 * time.Millisecond, true, 6},
	} {
		if got := g.Check(c.rtt, 0, c.busy, nil, &wg); got != c.want {
			t.Errorf("check %d (%s, busy %t) = %d, want %d", i+1, c.rtt, c.busy, got, c.want)
		}
		if got := counter.Check(c.rtt, 0, c.busy, nil, &wg); got != c.want {
			t.Errorf("without a redial: check %d (%s, busy %t) = %d, want %d", i+1, c.rtt, c.busy, got, c.want)
		}
	}
	for range transport.RTTGrewChecks {
		counter.Check(time.Second, 0, false, nil, &wg)
	}
	wg.Wait()
	if n := dials.Load(); n != 0 {
		t.Errorf("%d successors dialled after fewer quiet grown checks in a row than %d, want none", n, transport.RTTGrewChecks)
	}
	if counter.Superseded() != nil {
		t.Error("a growth without a redial offers a channel")
	}
}

// A connection whose handshake measured an inflated RTT (30 ms over a 1 ms
// path, a busy machine's) is judged by the least RTT it measured since:
// 70 ms is under twice 30 plus 20 but well over twice 1 plus 20.
func TestRTTGrowthJudgesByTheLeastRTTMeasured(t *testing.T) {
	successor := &stubSession{}
	var dials atomic.Int32
	redial := func(context.Context) (transport.Session, error) { dials.Add(1); return successor, nil }
	measure := func(transport.Session) time.Duration { return 70 * time.Millisecond }
	g := transport.NewRTTGrowth("mem", 30*time.Millisecond, redial, measure, slog.New(&logtest.Recorder{}))
	done := make(chan struct{})
	defer close(done)
	var wg sync.WaitGroup
	for range 2 * transport.RTTGrewChecks {
		g.Check(70*time.Millisecond, 0, false, done, &wg)
	}
	wg.Wait()
	if n := dials.Load(); n != 0 {
		t.Fatalf("%d successors dialled with no lower RTT known, want none", n)
	}
	for range transport.RTTGrewChecks {
		g.Check(70*time.Millisecond, time.Millisecond, false, done, &wg)
	}
	wg.Wait()
	select {
	case n := <-g.Superseded():
		if n.Session != transport.Session(successor) {
			t.Errorf("offered %+v, want the successor", n)
		}
	default:
		t.Fatalf("no successor offered after %d dials", dials.Load())
	}
}

// A successor offered that nobody took is closed by Drop; the zero value
// offers nothing.
func TestRTTGrowthDropClosesAnUntakenSuccessor(t *testing.T) {
	s := &stubSession{}
	redial := func(context.Context) (transport.Session, error) { return s, nil }
	measure := func(transport.Session) time.Duration { return time.Second }
	g := transport.NewRTTGrowth("mem", 0, redial, measure, slog.New(&logtest.Recorder{}))
	var wg sync.WaitGroup
	for range transport.RTTGrewChecks {
		g.Check(time.Second, 0, false, nil, &wg)
	}
	wg.Wait()
	g.Drop()
	if !s.closed.Load() {
		t.Error("the untaken successor was not closed")
	}
	var zero transport.RTTGrowth
	zero.Check(time.Second, 0, false, nil, &wg)
	zero.Drop()
	if zero.Superseded() != nil {
		t.Error("the zero value offers a channel")
	}
}

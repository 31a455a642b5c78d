package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pqtunnel/pqtunnel/check"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/defaults"

	"github.com/pqtunnel/pqtunnel/transport"
)

// linger bounds every client connection beyond its measurement window, so
// that a stuck tunnel fails the measurement instead of hanging the run.
const linger = 15 * time.Second

// waitFor waits d or until ctx ends; it times a measurement window, it does
// not synchronise with anything.
func waitFor(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// perOp turns the CPU seconds each side had used before and after ops
// operations into CPU microseconds per operation, in sides order.
func perOp(before, after []float64, ops int) []float64 {
	if ops <= 0 {
		return nil
	}
	out := make([]float64, len(before))
	for i := range before {
		out[i] = (after[i] - before[i]) * 1e6 / float64(ops)
	}
	return out
}

// cpuOf reads the CPU seconds used so far by each of sides.
func cpuOf(sides []*child) ([]float64, error) {
	out := make([]float64, len(sides))
	for i, c := range sides {
		s, err := cpuSeconds(c.pid())
		if err != nil {
			return nil, fmt.Errorf("cpu of %s: %w", c.name, err)
		}
		out[i] = s
	}
	return out, nil
}

// bulkSample is one bulk transfer: throughput in MB/s (10^6 bytes) and the
// CPU seconds per GB (10^9 bytes) of each side, in sides order.
type bulkSample struct {
	mbps     float64
	cpuPerGB []float64
}

// dialFunc connects a client to addr; the conn it returns is a bulkConn.
type dialFunc func(ctx context.Context, addr string) (net.Conn, error)

// bulkConn is a client connection that can half-close: TCP, or TLS
// (where CloseWrite sends close_notify).
type bulkConn interface {
	net.Conn
	CloseWrite() error
}

// dialLoopback is how clients connect on loopback.
func dialLoopback(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// runBulk transfers over streams parallel connections to addr (the sink
// route for upload, the source route for download), made by dial, and
// counts the bytes that arrive at the receiving end during window, after
// warm. With abort the connections are reset after the window instead of
// finishing in order: over a slow path, what the tunnel has buffered would
// take longer to drain than the measurement.
func runBulk(ctx context.Context, org *origin, dial dialFunc, addr string, upload, abort bool, streams int, warm, window time.Duration, sides []*child) (bulkSample, error) {
	var received atomic.Int64
	arrived := received.Load
	route := routeSource
	if upload {
		arrived, route = org.sinkBytes.Load, routeSink
	}
	deadline := time.Now().Add(warm + window + linger)
	conns := make([]bulkConn, 0, streams)
	defer func() {
		for _, c := range conns {
			_ = c.Close() // already closed on the normal path
		}
	}()
	for range streams {
		c, err := dial(ctx, addr)
		if err != nil {
			return bulkSample{}, fmt.Errorf("connect %s: %w", addr, err)
		}
		_ = c.SetDeadline(deadline) // a failure shows as an I/O error
		conns = append(conns, c.(bulkConn))
	}
	stop := make(chan struct{})
	errs := make([]error, streams)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if upload {
				errs[i] = uploadStream(c, stop)
			} else {
				errs[i] = downloadStream(c, stop, &received)
			}
		}()
	}
	sample, err := measureWindow(ctx, arrived, warm, window, sides)
	idle := 10 * time.Second
	if abort {
		for _, c := range conns {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // then Close resets
			}
			_ = c.Close() // ends the stream routines with an error that says so
		}
		idle = 30 * time.Second
	}
	close(stop)
	wg.Wait()
	if err != nil {
		return sample, err
	}
	if err := errors.Join(errs...); err != nil && !abort {
		return sample, err
	}
	if sample.mbps <= 0 {
		return sample, errors.New("no bytes arrived during the window")
	}
	return sample, org.waitIdle(ctx, route, idle)
}

// measureWindow reads the arrived counter and the sides' CPU at the start
// and the end of window.
func measureWindow(ctx context.Context, arrived func() int64, warm, window time.Duration, sides []*child) (bulkSample, error) {
	if err := waitFor(ctx, warm); err != nil {
		return bulkSample{}, err
	}
	cpu0, err := cpuOf(sides)
	if err != nil {
		return bulkSample{}, err
	}
	b0, t0 := arrived(), time.Now()
	if err := waitFor(ctx, window); err != nil {
		return bulkSample{}, err
	}
	b1, t1 := arrived(), time.Now()
	cpu1, err := cpuOf(sides)
	if err != nil {
		return bulkSample{}, err
	}
	bytes := float64(b1 - b0)
	s := bulkSample{mbps: bytes / 1e6 / t1.Sub(t0).Seconds()}
	for i := range sides {
		if bytes > 0 {
			s.cpuPerGB = append(s.cpuPerGB, (cpu1[i]-cpu0[i])/(bytes/1e9))
		}
	}
	return s, nil
}

// uploadStream writes until stop, half-closes, and waits for the sink's
// close, which comes once it has read everything.
func uploadStream(c bulkConn, stop <-chan struct{}) error {
	defer c.Close()
	for {
		select {
		case <-stop:
			if err := c.CloseWrite(); err != nil {
				return fmt.Errorf("upload: half-close: %w", err)
			}
			if _, err := io.Copy(io.Discard, c); err != nil {
				return fmt.Errorf("upload: wait for the sink to finish: %w", err)
			}
			return nil
		default:
		}
		if _, err := c.Write(payload); err != nil {
			return fmt.Errorf("upload: %w", err)
		}
	}
}

// downloadStream reads, counting into received, until stop; then it
// half-closes, which stops the source, and reads to its EOF.
func downloadStream(c bulkConn, stop <-chan struct{}, received *atomic.Int64) error {
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, chunkSize)
		for {
			n, err := c.Read(buf)
			received.Add(int64(n))
			if err == io.EOF {
				done <- nil
				return
			}
			if err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case <-stop:
	case err := <-done:
		return fmt.Errorf("download ended early: %w", errOr(err, io.ErrUnexpectedEOF))
	}
	if err := c.CloseWrite(); err != nil {
		_ = c.Close() // ends the reader
		<-done
		return fmt.Errorf("download: half-close: %w", err)
	}
	if err := <-done; err != nil {
		return fmt.Errorf("download: %w", err)
	}
	return nil
}

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// echoOnce connects to addr with dial, sends one byte, reads it back and
// closes.
func echoOnce(ctx context.Context, dial dialFunc, addr string) (time.Duration, error) {
	start := time.Now()
	c, err := dial(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(start.Add(5 * time.Second)) // a failure shows as an I/O error
	var b [1]byte
	b[0] = 'x'
	if _, err := c.Write(b[:]); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, fmt.Errorf("read echo: %w", err)
	}
	if err := c.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// rateSample is one connection-rate run: completed operations per second,
// their latency percentiles in milliseconds, and the CPU microseconds per
// connection of each side. The CPU figure is what a connection costs the
// sides whatever the machine's load, which moves the rates and their ratio
// to direct from run to run.
type rateSample struct {
	rate, p50, p99 float64
	cpuUsPerConn   []float64
	errors         int
	firstErr       error
}

// runConnRate runs echoOnce against addr from workers concurrent clients:
// operations started in warm are not counted in the rate, and none start
// after window. The CPU of sides is read over every connection, warm-up
// included.
func runConnRate(ctx context.Context, dial dialFunc, addr string, workers int, warm, window time.Duration, sides []*child) (rateSample, error) {
	before, err := cpuOf(sides)
	if err != nil {
		return rateSample{}, err
	}
	var done atomic.Int64 // connections that completed, warm-up included
	start := time.Now()
	from, until := start.Add(warm), start.Add(warm+window)
	lat := make([][]time.Duration, workers)
	errs := make([]int, workers)
	firstErr := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t := time.Now()
				if !t.Before(until) {
					return
				}
				d, err := echoOnce(ctx, dial, addr)
				if err != nil {
					errs[w]++
					if firstErr[w] == nil {
						firstErr[w] = err
					}
					if errs[w] > 100 {
						return
					}
					continue
				}
				done.Add(1)
				if !t.Before(from) {
					lat[w] = append(lat[w], d)
				}
			}
		}()
	}
	wg.Wait()
	end := time.Now()
	if ctx.Err() != nil {
		return rateSample{}, context.Cause(ctx)
	}
	after, err := cpuOf(sides)
	if err != nil {
		return rateSample{}, err
	}
	var all []time.Duration
	s := rateSample{cpuUsPerConn: perOp(before, after, int(done.Load()))}
	for w := range workers {
		all = append(all, lat[w]...)
		s.errors += errs[w]
		if s.firstErr == nil {
			s.firstErr = firstErr[w]
		}
	}
	if len(all) == 0 {
		return s, fmt.Errorf("no connection completed: %w", errOr(s.firstErr, errors.New("none started")))
	}
	slices.Sort(all)
	s.rate = float64(len(all)) / end.Sub(from).Seconds()
	s.p50 = ms(percentile(all, 0.50))
	s.p99 = ms(percentile(all, 0.99))
	return s, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile of sorted, nearest-rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// handshakeSample is one group probed for a window: handshakes per second
// (one after another: the inverse of the median wall time of a whole
// ProbeTunnel, dial to close, so that a stall elsewhere on the machine does
// not weigh), the median handshake as the client measured it, and what the
// probes saw on the wire.
type handshakeSample struct {
	rate, p50ms float64
	probe       check.Probe
}

// runHandshakes probes peer over transport offering exactly group, one
// handshake after another, for window.
func runHandshakes(ctx context.Context, cfg check.Config, peer string, tr transport.Transport, group tls.CurveID, window time.Duration) (handshakeSample, error) {
	mode := hybridtls.Strict
	if !hybridtls.IsPostQuantum(group) {
		mode = hybridtls.Prefer
	}
	probe := func() check.Probe {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return check.ProbeTunnel(pctx, cfg, peer, tr, mode, []tls.CurveID{group})
	}
	// One probe first, unmeasured: it warms caches and gives the sizes.
	s := handshakeSample{probe: probe()}
	if s.probe.Err != nil {
		return s, fmt.Errorf("probe %s over %s: %w", hybridtls.GroupName(group), tr.Name(), s.probe.Err)
	}
	if s.probe.Group != group {
		return s, fmt.Errorf("offered only %s over %s but negotiated %s", hybridtls.GroupName(group), tr.Name(), hybridtls.GroupName(s.probe.Group))
	}
	var hs, walls []time.Duration
	type flight struct{ bytes, packets int }
	var flights []flight
	start := time.Now()
	for time.Since(start) < window || len(hs) < 3 {
		t := time.Now()
		p := probe()
		if p.Err != nil {
			return s, fmt.Errorf("probe %s over %s: %w", hybridtls.GroupName(group), tr.Name(), p.Err)
		}
		walls = append(walls, time.Since(t))
		hs = append(hs, p.Handshake)
		if p.FirstFlightPackets > 0 {
			flights = append(flights, flight{p.FirstFlight, p.FirstFlightPackets})
		}
		if ctx.Err() != nil {
			return s, context.Cause(ctx)
		}
	}
	// The QUIC first flight is counted up to the first datagram back, which
	// on loopback can overtake the client's second Initial, and under load a
	// probe timeout can add a retransmission: the median is the flight.
	if len(flights) > 0 {
		slices.SortFunc(flights, func(a, b flight) int { return a.packets - b.packets })
		f := flights[len(flights)/2]
		s.probe.FirstFlight, s.probe.FirstFlightPackets = f.bytes, f.packets
	}
	slices.Sort(hs)
	slices.Sort(walls)
	s.rate = 1 / percentile(walls, 0.5).Seconds()
	s.p50ms = ms(percentile(hs, 0.5))
	return s, nil
}

// sideState is what the memory figure reads from one side.
type sideState struct {
	rssKiB, heapKiB, stackKiB, goroutines, fds float64
}

func readSide(ctx context.Context, c *child) (sideState, error) {
	rss, err := rssKiB(c.pid())
	if err != nil {
		return sideState{}, err
	}
	m, err := scrapeMetrics(ctx, c)
	if err != nil {
		return sideState{}, err
	}
	g, ok := m["go_goroutines"]
	if !ok {
		return sideState{}, fmt.Errorf("%s: no go_goroutines in /metrics", c.name)
	}
	return sideState{
		rssKiB: rss, goroutines: g, fds: m["process_open_fds"],
		heapKiB: m["go_memstats_heap_inuse_bytes"] / 1024, stackKiB: m["go_memstats_stack_inuse_bytes"] / 1024,
	}, nil
}

// runMemory opens n connections through p's idle route, each checked with a
// one-byte echo and then left idle, reads both sides, closes them all, and
// reads both sides again once they have settled.
func runMemory(ctx context.Context, p *path, n int, openTimeout, settle time.Duration) (MemoryFigure, error) {
	fig := MemoryFigure{Mode: p.mode, Requested: n}
	sides := p.sides()
	base := make([]sideState, len(sides))
	for i, c := range sides {
		s, err := readSide(ctx, c)
		if err != nil {
			return fig, err
		}
		base[i] = s
	}
	conns, openErr := openIdle(ctx, p.routes[routeIdle], n, openTimeout)
	fig.Opened = len(conns)
	fig.OpenSeconds = openErr.elapsed.Seconds()
	defer func() {
		for _, c := range conns {
			_ = c.Close() // closed already on the normal path
		}
	}()
	loaded := make([]sideState, len(sides))
	for i, c := range sides {
		s, err := readSide(ctx, c)
		if err != nil {
			return fig, err
		}
		loaded[i] = s
	}
	for _, c := range conns {
		_ = c.Close() // a close error changes nothing here
	}
	conns = nil
	after, rssBack, settleErr := settleSides(ctx, sides, base, loaded, settle)
	if after == nil {
		return fig, settleErr
	}
	for i, c := range sides {
		sm := SideMemory{
			Side: sideName(i), PID: c.pid(),
			BaselineRSSKiB: base[i].rssKiB, LoadedRSSKiB: loaded[i].rssKiB, AfterRSSKiB: after[i].rssKiB,
			BaselineHeapKiB: base[i].heapKiB, LoadedHeapKiB: loaded[i].heapKiB, AfterHeapKiB: after[i].heapKiB,
			BaselineStackKiB: base[i].stackKiB, LoadedStackKiB: loaded[i].stackKiB, AfterStackKiB: after[i].stackKiB,
			BaselineGoroutines: base[i].goroutines, LoadedGoroutines: loaded[i].goroutines, AfterGoroutines: after[i].goroutines,
			BaselineFDs: base[i].fds, LoadedFDs: loaded[i].fds, AfterFDs: after[i].fds,
			Returned:    goroutinesBack(base[i], after[i]),
			RSSReturned: rssBack[i],
		}
		if fig.Opened > 0 {
			k := float64(fig.Opened)
			sm.RSSPerConnKiB = (loaded[i].rssKiB - base[i].rssKiB) / k
			sm.HeapPerConnKiB = (loaded[i].heapKiB - base[i].heapKiB) / k
			sm.StackPerConnKiB = (loaded[i].stackKiB - base[i].stackKiB) / k
			sm.GoroutinesPerConn = (loaded[i].goroutines - base[i].goroutines) / k
		}
		fig.Sides = append(fig.Sides, sm)
	}
	return fig, errors.Join(openErr.err, settleErr)
}

func sideName(i int) string {
	if i == 0 {
		return "dial"
	}
	return "listen"
}

type openResult struct {
	elapsed time.Duration
	err     error
}

// openIdle opens n echo-checked connections to addr from 64 workers.
func openIdle(ctx context.Context, addr string, n int, timeout time.Duration) ([]net.Conn, openResult) {
	start := time.Now()
	deadline := start.Add(timeout)
	var next atomic.Int64
	var mu sync.Mutex
	var conns []net.Conn
	var failures int
	var firstErr error
	var wg sync.WaitGroup
	for range min(64, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) && ctx.Err() == nil && time.Now().Before(deadline) {
				c, err := openOne(addr, deadline)
				mu.Lock()
				if err != nil {
					failures++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					conns = append(conns, c)
				}
				stop := failures > 100
				mu.Unlock()
				if stop {
					return
				}
			}
		}()
	}
	wg.Wait()
	r := openResult{elapsed: time.Since(start)}
	switch {
	case failures > 0:
		r.err = fmt.Errorf("opened %d of %d idle connections; %d failed, first: %w", len(conns), n, failures, firstErr)
	case len(conns) < n:
		r.err = fmt.Errorf("opened only %d of %d idle connections within %s", len(conns), n, timeout)
	}
	if err := context.Cause(ctx); ctx.Err() != nil {
		r.err = err
	}
	return conns, r
}

func openOne(addr string, deadline time.Time) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(deadline) // a failure shows as an I/O error
	b := []byte{'x'}
	_, err = c.Write(b)
	if err == nil {
		_, err = io.ReadFull(c, b)
	}
	if err != nil {
		_ = c.Close() // the echo failure is what matters
		return nil, fmt.Errorf("echo: %w", err)
	}
	_ = c.SetDeadline(time.Time{}) // idle from now on, for as long as the figure needs
	return c, nil
}

// goroutinesBack: goroutines and open files back within 10 of base.
func goroutinesBack(base, now sideState) bool {
	return now.goroutines <= base.goroutines+10 && now.fds <= base.fds+10
}

// settleSides waits until each side's goroutines and open files are back
// at base (at most 30 s after a dial side has closed the extra tunnel
// connections it opened for them, idle for defaults.SurplusIdle), then up
// to settle for RSS to give back at least 90% of what the connections took. It returns the last reading of each
// side and whether its RSS came back.
func settleSides(ctx context.Context, sides []*child, base, loaded []sideState, settle time.Duration) ([]sideState, []bool, error) {
	wait := 30*time.Second + defaults.SurplusIdle
	deadline := time.Now().Add(wait)
	var rssDeadline time.Time
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	after := make([]sideState, len(sides))
	rssBack := make([]bool, len(sides))
	for {
		allBack, allRSS := true, true
		for i, c := range sides {
			s, err := readSide(ctx, c)
			if err != nil {
				return nil, nil, err
			}
			after[i] = s
			rssBack[i] = s.rssKiB-base[i].rssKiB <= 0.1*max(loaded[i].rssKiB-base[i].rssKiB, 0)+1024
			allBack = allBack && goroutinesBack(base[i], s)
			allRSS = allRSS && rssBack[i]
		}
		now := time.Now()
		if allBack && rssDeadline.IsZero() {
			rssDeadline = now.Add(settle)
		}
		switch {
		case allBack && allRSS:
			return after, rssBack, nil
		case !rssDeadline.IsZero() && now.After(rssDeadline):
			return after, rssBack, nil // RSS reported as not back
		case rssDeadline.IsZero() && now.After(deadline):
			return after, rssBack, fmt.Errorf("goroutines or open files did not return to baseline within %s after the idle connections closed", wait)
		}
		select {
		case <-ctx.Done():
			return nil, nil, context.Cause(ctx)
		case <-tick.C:
		}
	}
}

// awaitQuiet polls moved, a byte counter, every step until it grows by at
// most quiet in one step (true) or limit has passed (false).
func awaitQuiet(ctx context.Context, moved func() uint64, step time.Duration, quiet uint64, limit time.Duration) (bool, error) {
	deadline := time.Now().Add(limit)
	last := moved()
	for time.Now().Before(deadline) {
		if err := waitFor(ctx, step); err != nil {
			return false, err
		}
		now := moved()
		if now-last <= quiet {
			return true, nil
		}
		last = now
	}
	return false, nil
}

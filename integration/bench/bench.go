package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/check"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/wire"
)

// bench is one run: its options, the processes, and what was measured.
type bench struct {
	o   options
	log io.Writer
	org *origin
	top *topology
	res *Result
	col *collector // bulk and connection-rate figures
	cpu *collector // CPU per GB, keyed mode/side
	// redis holds the redis-benchmark figures, redisCPU their CPU per
	// request keyed mode/side.
	redis, redisCPU *collector
	// connCPU is the CPU per connection of the rate phase, keyed mode/side.
	connCPU *collector
	hs      map[string]*hsAcc
	errs    []string
}

// hsAcc gathers one transport and group's handshake samples.
type hsAcc struct {
	fig   HandshakeFigure
	rates []sample
	p50   []float64
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// runBench sets up origin and processes, runs every figure, and returns
// the result; on an error that ends the run (Ctrl-C, a process dying) it
// returns what was measured so far with the error.
func runBench(ctx context.Context, o options, log io.Writer) (*Result, error) {
	started := time.Now()
	b := &bench{o: o, log: log, col: newCollector(), cpu: newCollector(), redis: newCollector(), redisCPU: newCollector(), connCPU: newCollector(), hs: map[string]*hsAcc{}}
	b.res = &Result{Meta: Meta{
		Started: started.UTC().Truncate(time.Second), Smoke: o.smoke, Reps: o.reps,
		BulkWindow: o.bulk.String(), Warmup: o.warm.String(), RateWindow: o.rate.String(), HandshakeWindow: o.handshake.String(),
		Go: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH, CPUs: runtime.NumCPU(), LoadStart: loadavg(),
	}}
	err := b.runAll(ctx)
	b.finish(started)
	return b.res, err
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.log, "bench: "+format+"\n", args...)
}

func (b *bench) note(format string, args ...any) {
	b.res.Meta.Notes = append(b.res.Meta.Notes, fmt.Sprintf(format, args...))
}

func (b *bench) failed(what string, err error) {
	msg := what + ": " + err.Error()
	b.errs = append(b.errs, msg)
	b.progress("FAILED %s", truncate(msg, 2000))
}

func (b *bench) runAll(ctx context.Context) error {
	// Each process holds one file per idle connection: the harness the
	// client end, the echo helper the origin end, the dial side the
	// accepted client, the listen side its origin connection.
	limit, err := raiseFileLimit(uint64(b.o.idle + 4096))
	b.res.Meta.FileLimit = limit
	if err != nil {
		b.note("could not raise RLIMIT_NOFILE: %v", err)
	}
	if need := uint64(b.o.idle + 1024); limit < need {
		n := max(int(limit)-1024, 0)
		b.note("RLIMIT_NOFILE is %d: idle connections cut from %d to %d", limit, b.o.idle, n)
		b.o.idle = n
	}
	b.res.Meta.IdleConns = b.o.idle
	// quic-go's own warning about UDP buffers goes to the standard logger.
	_ = os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true") // only read by quic-go

	dir, err := os.MkdirTemp("", "pqtunnel-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := b.o.bin
	if bin == "" {
		b.progress("building ./cmd/pqtunnel")
		if bin, err = buildBinary(ctx, dir); err != nil {
			return err
		}
	}
	sup := newSupervisor(ctx)
	defer sup.stopAll()
	ctx = sup.ctx
	org, err := startOrigin()
	if err != nil {
		return err
	}
	defer org.close()
	b.org = org
	maxStreams := max(4096, b.o.idle+1024)
	b.res.Meta.MaxStreams = maxStreams
	if maxStreams != 4096 {
		b.note("PQT_MAX_STREAMS=%d on every side (default 4096) so that %d idle connections fit on one quic tunnel connection; over tcp PQT_MAX_CONN_MEMORY bounds one to 511 streams and the dial side opens more", maxStreams, b.o.idle)
	}
	b.progress("starting origin, echo helper, redis-server, 3 listen sides, 4 dial sides and the relays")
	_, idleOrigin, err := startEchoHelper(ctx, sup)
	if err != nil {
		return err
	}
	extra := map[string]string{}
	if len(b.o.only) == 0 || slices.Contains(b.o.only, "redis") {
		redisAddr, err := startRedis(ctx, sup)
		if err != nil {
			return err
		}
		if redisAddr != "" {
			extra[routeRedis] = redisAddr
		}
	}
	top, err := startTopology(ctx, sup, bin, dir, org, idleOrigin, extra, maxStreams)
	if err != nil {
		return err
	}
	b.top = top
	if addr := extra[routeRedis]; addr != "" {
		relays, err := startRelayPath(ctx, sup, routeRedis, addr)
		if err != nil {
			return err
		}
		top.paths[modeRelays] = relays
		ha, version, err := startHAProxyPath(ctx, sup, dir, routeRedis, addr)
		if err != nil {
			return err
		}
		if ha == nil {
			b.note("haproxy is not installed: no haproxy_relays figures for Redis (apt-get install haproxy)")
		} else {
			top.paths[modeHAProxy] = ha
			b.note("relays and haproxy_relays (Redis only) are two plain TCP relay processes, in Go and in %s (one thread), without encryption or multiplexing: the floor of any two-process tunnel", version)
		}
	}
	b.res.Meta.Processes = top.describe()

	// Memory first, on fresh processes, so that heap left over from bulk
	// transfers does not hide what idle connections cost.
	phases := []struct {
		name string
		run  func(context.Context) error
	}{{"memory", b.runMemoryPhase}, {"bulk", b.runBulkPhase}, {"rate", b.runRatePhase}, {"redis", b.runRedisPhase}, {"handshake", b.runHandshakePhase}, {"tls", func(ctx context.Context) error { return b.runTLSPhase(ctx, bin, dir, sup) }}}
	for _, phase := range phases {
		if len(b.o.only) > 0 && !slices.Contains(b.o.only, phase.name) {
			continue
		}
		if err := phase.run(ctx); err != nil {
			return err
		}
	}
	return nil
}

// rotate returns modes starting at rep, so no mode always runs first.
func rotate(modes []string, rep int) []string {
	k := rep % len(modes)
	return append(slices.Clone(modes[k:]), modes[:k]...)
}

func (b *bench) runMemoryPhase(ctx context.Context) error {
	openTimeout := 90 * time.Second
	if b.o.smoke {
		openTimeout = 20 * time.Second
	}
	for _, m := range []string{modeTCP, modeQUIC} {
		b.progress("memory: %d idle connections through %s", b.o.idle, m)
		fig, err := runMemory(ctx, b.top.paths[m], b.o.idle, openTimeout, b.o.settle)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if err != nil {
			fig.Errors = append(fig.Errors, err.Error())
			b.failed("memory "+m, err)
		}
		b.res.Memory = append(b.res.Memory, fig)
	}
	return nil
}

type bulkSpec struct {
	name    string
	upload  bool
	streams int
}

var bulkSpecs = []bulkSpec{
	{"upload_1_stream", true, 1},
	{"download_1_stream", false, 1},
	{"upload_4_streams", true, 4},
	{"download_4_streams", false, 4},
}

func (b *bench) runBulkPhase(ctx context.Context) error {
	for rep := range b.o.reps {
		b.progress("bulk throughput, repetition %d of %d", rep+1, b.o.reps)
		for _, spec := range bulkSpecs {
			modes := []string{modeDirect, modeTCP, modeQUIC}
			if spec.streams > 1 {
				modes = append(modes, modeTCP4Conn, modeQUIC4Conn)
			}
			for _, m := range rotate(modes, rep) {
				p := b.top.paths[m]
				addr := p.routes[routeSource]
				if spec.upload {
					addr = p.routes[routeSink]
				}
				s, err := runBulk(ctx, b.org, dialLoopback, addr, spec.upload, false, spec.streams, b.o.warm, b.o.bulk, p.sides())
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				if err != nil {
					b.col.fail(spec.name, "MB/s", m, err)
					b.failed(fmt.Sprintf("bulk %s %s", spec.name, m), err)
					continue
				}
				b.col.add(spec.name, "MB/s", m, rep, s.mbps)
				for i, c := range s.cpuPerGB {
					b.cpu.add("cpu_"+spec.name, "s/GB", m+"/"+sideName(i), rep, c)
				}
				if b.o.verbose {
					b.progress("  %s %s: %.1f MB/s cpu/GB %v", spec.name, m, s.mbps, s.cpuPerGB)
				}
			}
		}
	}
	return nil
}

func (b *bench) runRatePhase(ctx context.Context) error {
	warm := b.o.warm / 2
	for rep := range b.o.reps {
		b.progress("connection rate, repetition %d of %d", rep+1, b.o.reps)
		for _, spec := range []struct {
			name    string
			workers int
		}{{"sequential", 1}, {"concurrent_32", 32}} {
			for _, m := range rotate([]string{modeDirect, modeTCP, modeQUIC}, rep) {
				p := b.top.paths[m]
				s, err := runConnRate(ctx, dialLoopback, p.routes[routeEcho], spec.workers, warm, b.o.rate, p.sides())
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				if err == nil && s.errors > 0 {
					err = fmt.Errorf("%d of the connections failed, first: %w", s.errors, s.firstErr)
				}
				if err != nil {
					b.col.fail(spec.name+"_rate", "conn/s", m, err)
					b.failed(fmt.Sprintf("connection rate %s %s", spec.name, m), err)
					if s.rate == 0 {
						continue
					}
				}
				b.col.add(spec.name+"_rate", "conn/s", m, rep, s.rate)
				b.col.add(spec.name+"_p50", "ms", m, rep, s.p50)
				b.col.add(spec.name+"_p99", "ms", m, rep, s.p99)
				for i, c := range s.cpuUsPerConn {
					b.connCPU.add("cpu_"+spec.name, "µs/conn", m+"/"+sideName(i), rep, c)
				}
				if b.o.verbose {
					b.progress("  %s %s: %.0f conn/s p50 %.3f ms p99 %.3f ms cpu µs/conn %v", spec.name, m, s.rate, s.p50, s.p99, s.cpuUsPerConn)
				}
			}
		}
		// Wait for the echo connections of this repetition to be gone.
		if err := b.org.waitIdle(ctx, routeEcho, 10*time.Second); err != nil {
			b.failed("connection rate teardown", err)
		}
	}
	return nil
}

var handshakeGroupList = []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024, tls.X25519}

// probeConfig is the dial side's identity and policy for in-process probes.
func (b *bench) probeConfig() (check.Config, error) {
	id, err := pinned.LoadIdentityFile(b.top.dialIdentity)
	if err != nil {
		return check.Config{}, err
	}
	pin, err := pinned.ParsePin(b.top.listenPin)
	if err != nil {
		return check.Config{}, err
	}
	store, err := hybridtls.NewStore(hybridtls.Policy{Mode: hybridtls.Strict, Groups: hybridtls.DefaultGroups, ALPN: wire.ALPN},
		&pinned.Authenticator{Identity: id, Peers: []pinned.Pin{pin}})
	if err != nil {
		return check.Config{}, err
	}
	return check.Config{TLS: store, Mux: transport.Config{HandshakeTimeout: 10 * time.Second}}, nil
}

func (b *bench) runHandshakePhase(ctx context.Context) error {
	cfg, err := b.probeConfig()
	if err != nil {
		b.failed("handshake probes", err)
		return nil
	}
	for rep := range b.o.reps {
		b.progress("tunnel establishment, repetition %d of %d", rep+1, b.o.reps)
		for _, tr := range []transport.Transport{tlsmux.Transport{}, quic.Transport{}} {
			groups := slices.Clone(handshakeGroupList)
			k := rep % len(groups)
			groups = append(groups[k:], groups[:k]...)
			for _, g := range groups {
				key := tr.Name() + "/" + hybridtls.GroupName(g)
				acc := b.hs[key]
				if acc == nil {
					acc = &hsAcc{fig: HandshakeFigure{Transport: tr.Name(), Group: hybridtls.GroupName(g)}}
					b.hs[key] = acc
				}
				s, err := runHandshakes(ctx, cfg, b.top.handshakeAddr, tr, g, b.o.handshake)
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				if s.probe.ClientHello > 0 {
					acc.fig.ClientHello, acc.fig.ServerHello = s.probe.ClientHello, s.probe.ServerHello
				}
				if s.probe.FirstFlight > acc.fig.FirstFlight {
					acc.fig.FirstFlight, acc.fig.FirstFlightPkts = s.probe.FirstFlight, s.probe.FirstFlightPackets
				}
				if err != nil {
					acc.fig.Errors = append(acc.fig.Errors, err.Error())
					b.failed("handshake "+key, err)
					continue
				}
				acc.rates = append(acc.rates, sample{rep, s.rate})
				acc.p50 = append(acc.p50, s.p50ms)
				if b.o.verbose {
					b.progress("  %s: %.1f handshakes/s, p50 %.2f ms", key, s.rate, s.p50ms)
				}
			}
		}
	}
	return nil
}

// finish turns the collected samples into figures and targets.
func (b *bench) finish(started time.Time) {
	r := b.res
	for _, f := range b.col.figures() {
		if strings.HasPrefix(f.Figure, "upload") || strings.HasPrefix(f.Figure, "download") {
			r.Bulk = append(r.Bulk, f)
		} else {
			r.ConnRate = append(r.ConnRate, f)
		}
	}
	r.CPU = b.cpu.figures() // no direct process to compare with, so no ratio
	r.Redis = b.redis.figures()
	r.RedisCPU = b.redisCPU.figures()
	r.ConnCPU = b.connCPU.figures()
	for _, tr := range []string{tlsmux.Name, quic.Name, modeTLS} {
		classical := b.hs[tr+"/X25519"]
		for _, g := range handshakeGroupList {
			acc := b.hs[tr+"/"+hybridtls.GroupName(g)]
			if acc == nil {
				continue
			}
			acc.fig.PerSecond, acc.fig.HandshakeMs = newStat(values(acc.rates)), newStat(acc.p50)
			if classical != nil {
				// Paired by repetition, like the ratios to direct.
				byRep := map[int]float64{}
				for _, c := range classical.rates {
					byRep[c.rep] = c.v
				}
				var rate, time []float64
				for _, s := range acc.rates {
					if c, ok := byRep[s.rep]; ok && c > 0 && s.v > 0 {
						rate, time = append(rate, s.v/c), append(time, c/s.v)
					}
				}
				if len(rate) > 0 {
					acc.fig.RateRatioToX25519, acc.fig.TimeRatioToX25519 = newStat(rate).Median, newStat(time).Median
				}
			}
			r.Handshake = append(r.Handshake, acc.fig)
		}
	}
	r.Targets = checkTargets(r)
	r.Errors = append(r.Errors, b.errs...)
	if r.Errors == nil {
		r.Errors = []string{}
	}
	r.Meta.LoadEnd = loadavg()
	r.Meta.Seconds = time.Since(started).Seconds()
	if runtime.NumCPU() <= 4 {
		b.note("%d CPUs, shared with whatever else runs here: origin, clients and both sides compete for them, so the figures are noisy; compare ratios from one run", runtime.NumCPU())
	}
}

package main

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// routeRedis leads to a redis-server the harness starts, when it is
// installed (scripts/test-deps installs it).
const routeRedis = "redis"

// redisSpec is one redis-benchmark load: GET with clients connections,
// kept open for every request (persistent) or made anew for each.
type redisSpec struct {
	name       string
	clients    int
	persistent bool
	// requests is how many requests one measurement makes, full and smoke.
	requests, smokeRequests int
}

var redisSpecs = []redisSpec{
	{"redis_get_persistent_50", 50, true, 60000, 5000},
	{"redis_get_new_conn_8", 8, false, 8000, 1000},
}

// startRedis starts redis-server on a free loopback port, without
// persistence, and waits until it accepts. It returns "" and no error when
// redis-server or redis-benchmark is not installed.
func startRedis(ctx context.Context, sup *supervisor) (string, error) {
	server, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil
	}
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		return "", nil
	}
	var lastErr error
	for range 3 {
		port, err := testutil.FreePort()
		if err != nil {
			return "", err
		}
		addr := testutil.Loopback(port)
		c, err := sup.start("redis-server", server, []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
			"--save", "", "--appendonly", "no", "--protected-mode", "no"}, nil)
		if err != nil {
			return "", err
		}
		if lastErr = waitAccepting(ctx, c, addr, 10*time.Second); lastErr == nil {
			sup.watch(c)
			return addr, nil
		}
	}
	return "", fmt.Errorf("start redis-server: %w", lastErr)
}

// waitAccepting polls addr until it accepts a connection, c exits, or
// timeout passes.
func waitAccepting(ctx context.Context, c *child, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return conn.Close()
		}
		if c.exited() {
			return fmt.Errorf("%s exited: %s", c.name, truncate(c.out.String(), 400))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s on %s: %w", c.name, addr, err)
		}
		if err := waitFor(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// redisSample is one redis-benchmark run: requests per second, its p50
// latency, and the CPU microseconds per request of each side.
type redisSample struct {
	rps, p50ms  float64
	cpuUsPerReq []float64
}

// runRedisBenchmark runs redis-benchmark GET against addr and reads the
// CPU the sides used meanwhile.
func runRedisBenchmark(ctx context.Context, addr string, spec redisSpec, requests int, sides []*child) (redisSample, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return redisSample{}, fmt.Errorf("redis-benchmark address: %w", err)
	}
	keep := "0"
	if spec.persistent {
		keep = "1"
	}
	args := []string{"-h", host, "-p", port, "-t", "get", "-n", strconv.Itoa(requests),
		"-c", strconv.Itoa(spec.clients), "-k", keep, "--csv"}
	before, err := cpuOf(sides)
	if err != nil {
		return redisSample{}, err
	}
	out, err := exec.CommandContext(ctx, "redis-benchmark", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, truncate(string(ee.Stderr), 400))
		}
		return redisSample{}, fmt.Errorf("redis-benchmark %s: %w", strings.Join(args, " "), err)
	}
	after, err := cpuOf(sides)
	if err != nil {
		return redisSample{}, err
	}
	s, err := parseRedisCSV(out)
	if err != nil {
		return redisSample{}, err
	}
	s.cpuUsPerReq = perOp(before, after, requests)
	return s, nil
}

// parseRedisCSV reads the GET row of redis-benchmark --csv: requests per
// second and p50 latency in ms.
func parseRedisCSV(out []byte) (redisSample, error) {
	r := csv.NewReader(strings.NewReader(string(out)))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		return redisSample{}, fmt.Errorf("redis-benchmark output: %w", err)
	}
	if len(rows) < 2 {
		return redisSample{}, fmt.Errorf("redis-benchmark output: %d rows, want a header and GET", len(rows))
	}
	col := func(name string) int { return slices.Index(rows[0], name) }
	iRPS, iP50 := col("rps"), col("p50_latency_ms")
	for _, row := range rows[1:] {
		if len(row) == 0 || row[0] != "GET" || iRPS < 0 || iP50 < 0 || max(iRPS, iP50) >= len(row) {
			continue
		}
		rps, err1 := strconv.ParseFloat(row[iRPS], 64)
		p50, err2 := strconv.ParseFloat(row[iP50], 64)
		if err := errors.Join(err1, err2); err != nil {
			return redisSample{}, fmt.Errorf("redis-benchmark output: %w", err)
		}
		return redisSample{rps: rps, p50ms: p50}, nil
	}
	return redisSample{}, errors.New("redis-benchmark output: no GET row with rps and p50_latency_ms")
}

func (b *bench) runRedisPhase(ctx context.Context) error {
	if b.top.paths[modeDirect].routes[routeRedis] == "" {
		b.note("redis-server or redis-benchmark is not installed (scripts/test-deps installs them): no Redis figures")
		return nil
	}
	// relays, two plain relay processes (and haproxy_relays, two haproxy
	// processes, when installed), is the floor of any tunnel of two
	// processes: what tcp and quic cost beyond it is their own.
	modes := []string{modeDirect, modeTCP, modeQUIC, modeRelays}
	if b.top.paths[modeHAProxy] != nil {
		modes = append(modes, modeHAProxy)
	}
	// One short run per path first: the first connections of a fresh
	// process and Redis's first allocations are not what is measured.
	for _, m := range modes {
		if _, err := runRedisBenchmark(ctx, b.top.paths[m].routes[routeRedis], redisSpecs[0], 2000, nil); err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			b.failed("redis warm-up "+m, err)
		}
	}
	for rep := range b.o.reps {
		b.progress("redis-benchmark GET, repetition %d of %d", rep+1, b.o.reps)
		for _, spec := range redisSpecs {
			n := spec.requests
			if b.o.smoke {
				n = spec.smokeRequests
			}
			for _, m := range rotate(modes, rep) {
				p := b.top.paths[m]
				s, err := runRedisBenchmark(ctx, p.routes[routeRedis], spec, n, p.sides())
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				if err != nil {
					b.redis.fail(spec.name, "req/s", m, err)
					b.failed(fmt.Sprintf("redis %s %s", spec.name, m), err)
					continue
				}
				b.redis.add(spec.name, "req/s", m, rep, s.rps)
				b.redis.add(spec.name+"_p50", "ms", m, rep, s.p50ms)
				for i, c := range s.cpuUsPerReq {
					b.redisCPU.add("cpu_"+spec.name, "µs/req", m+"/"+sideName(i), rep, c)
				}
				if b.o.verbose {
					b.progress("  %s %s: %.0f req/s p50 %.3f ms cpu µs/req %v", spec.name, m, s.rps, s.p50ms, s.cpuUsPerReq)
				}
			}
		}
	}
	return nil
}

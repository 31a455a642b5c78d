package integration

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// metSample is one sample of the Prometheus text exposition format.
type metSample struct {
	name   string
	labels map[string]string
	value  float64
}

// metSet is one scrape of /metrics.
type metSet []metSample

// metParse parses the Prometheus text exposition format: comment and blank
// lines are skipped, every other line must be name{labels} value.
func metParse(text string) (metSet, error) {
	var out metSet
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := metParseLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", i+1, line, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func metParseLine(line string) (metSample, error) {
	s := metSample{labels: map[string]string{}}
	end := strings.IndexAny(line, "{ ")
	if end <= 0 {
		return s, errors.New("no metric name")
	}
	s.name, line = line[:end], line[end:]
	if strings.HasPrefix(line, "{") {
		line = line[1:]
		for !strings.HasPrefix(line, "}") {
			k, rest, ok := strings.Cut(line, "=")
			if !ok {
				return s, errors.New("label without '='")
			}
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return s, fmt.Errorf("label %s: %w", k, err)
			}
			v, err := strconv.Unquote(q)
			if err != nil {
				return s, fmt.Errorf("label %s: %w", k, err)
			}
			s.labels[strings.TrimSpace(k)] = v
			line = strings.TrimPrefix(rest[len(q):], ",")
			if line == "" {
				return s, errors.New("unterminated labels")
			}
		}
		line = line[1:]
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return s, errors.New("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, fmt.Errorf("value: %w", err)
	}
	s.value = v
	return s, nil
}

// find returns the samples called name whose labels include the pairs kv.
func (m metSet) find(name string, kv ...string) []metSample {
	var out []metSample
	for _, s := range m {
		if s.name != name {
			continue
		}
		ok := true
		for i := 0; i+1 < len(kv); i += 2 {
			if s.labels[kv[i]] != kv[i+1] {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

// value is the sum of the samples find returns, and whether there was any.
func (m metSet) value(name string, kv ...string) (float64, bool) {
	found := m.find(name, kv...)
	var sum float64
	for _, s := range found {
		sum += s.value
	}
	return sum, len(found) > 0
}

// has says whether a sample called name with the pairs kv exists.
func (m metSet) has(name string, kv ...string) bool { return len(m.find(name, kv...)) > 0 }

// describe lists the samples called name, for failure messages.
func (m metSet) describe(name string) string {
	var parts []string
	for _, s := range m.find(name) {
		var ls []string
		for k, v := range s.labels {
			ls = append(ls, k+"="+strconv.Quote(v))
		}
		sort.Strings(ls)
		parts = append(parts, fmt.Sprintf("{%s} %g", strings.Join(ls, ","), s.value))
	}
	if len(parts) == 0 {
		return name + ": no samples"
	}
	return name + ": " + strings.Join(parts, "; ")
}

// metClient is the HTTP client for every metrics request; each request is
// bounded by its context as well.
var metClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// metGet fetches http://addr+path and returns the status and body.
func metGet(ctx context.Context, addr, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := metClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("read %s: %w", path, err)
	}
	return resp.StatusCode, string(body), nil
}

// metScrape fetches and parses /metrics at addr.
func metScrape(ctx context.Context, addr string) (metSet, string, error) {
	code, body, err := metGet(ctx, addr, "/metrics")
	if err != nil {
		return nil, "", err
	}
	if code != http.StatusOK {
		return nil, body, fmt.Errorf("GET /metrics: status %d", code)
	}
	m, err := metParse(body)
	return m, body, err
}

// metPoll calls f every interval until it returns true or ctx ends; it
// reports whether f succeeded.
func metPoll(ctx context.Context, interval time.Duration, f func() bool) bool {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if f() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// metAwait scrapes addr until check accepts the metrics, failing the test
// with check's last complaint if that does not happen within d.
func metAwait(t *testing.T, ctx context.Context, who, addr string, d time.Duration, check func(m metSet) error) metSet {
	t.Helper()
	var last metSet
	var lastErr error
	ok := metPoll(within(t, ctx, d), 100*time.Millisecond, func() bool {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		m, _, err := metScrape(rctx, addr)
		if err != nil {
			lastErr = err
			return false
		}
		last = m
		lastErr = check(m)
		return lastErr == nil
	})
	if !ok {
		t.Fatalf("%s metrics at %s after %s: %v", who, addr, d, lastErr)
	}
	return last
}

// metGoroutines returns go_goroutines from addr.
func metGoroutines(t *testing.T, ctx context.Context, who, addr string) int {
	t.Helper()
	m := metAwait(t, ctx, who, addr, 10*time.Second, func(m metSet) error {
		if !m.has("go_goroutines") {
			return errors.New("no go_goroutines")
		}
		return nil
	})
	v, _ := m.value("go_goroutines")
	return int(v)
}

// metSettle waits up to d for go_goroutines at addr to come back within
// slack of baseline, and returns the value it settled at.
func metSettle(t *testing.T, ctx context.Context, who, addr string, baseline, slack int, d time.Duration) int {
	t.Helper()
	start := time.Now()
	var got int
	metAwait(t, ctx, who, addr, d, func(m metSet) error {
		v, ok := m.value("go_goroutines")
		if !ok {
			return errors.New("no go_goroutines")
		}
		got = int(v)
		if got > baseline+slack || got < baseline-slack {
			return fmt.Errorf("go_goroutines %d, want %d±%d", got, baseline, slack)
		}
		return nil
	})
	t.Logf("%s: go_goroutines %d (baseline %d) after %s", who, got, baseline, time.Since(start).Round(time.Millisecond))
	return got
}

// metAddr returns a fresh loopback address for PQT_METRICS.
func metAddr(t *testing.T) string { return loopback(freePort(t)) }

// metExpect compares a metric with want exactly, or at least want when atLeast.
func metExpect(m metSet, atLeast bool, want float64, name string, kv ...string) error {
	v, ok := m.value(name, kv...)
	switch {
	case !ok && !atLeast && want == 0:
		return nil // a counter or gauge never touched is not exported
	case !ok:
		return fmt.Errorf("no sample %s%v (%s)", name, kv, m.describe(name))
	case atLeast && v < want:
		return fmt.Errorf("%s%v = %g, want at least %g", name, kv, v, want)
	case !atLeast && v != want:
		return fmt.Errorf("%s%v = %g, want %g", name, kv, v, want)
	}
	return nil
}

// metAll returns the first error of errs.
func metAll(errs ...error) error { return errors.Join(errs...) }

// TestMetricsTraffic pushes traffic through a pair with PQT_METRICS on both
// sides and checks what /metrics says about it: tunnels up by transport and
// group, handshakes, streams by route and direction, payload bytes, origin
// dial times, runtime metrics, QUIC RTT, and an origin refusal counted on
// both sides.
func TestMetricsTraffic(t *testing.T) {
	const clients, size = 5, 200 << 10
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		closed := loopback(freePort(t)) // nothing listens here
		lm, dm := metAddr(t), metAddr(t)
		p := startPair(t, ctx, pairOptions{
			transport: transport,
			target:    "web=" + o.addr() + ",closed=" + closed,
			routes:    []string{"web", "closed"},
			listenEnv: map[string]string{"PQT_METRICS": lm},
			dialEnv:   map[string]string{"PQT_METRICS": dm},
		})

		tctx := within(t, ctx, 30*time.Second)
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := echoExact(tctx, p.dial.forward["web"], randomBytes(uint64(100+i), size)); err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}

		group := []string{"transport", transport, "group", "X25519MLKEM768", "sig", "ML-DSA-65"}
		const total = clients * size
		// Counters of a stream move when it ends, which the client may see
		// a moment before the tunnel side has accounted for it.
		dial := metAwait(t, ctx, "dial side", dm, 10*time.Second, func(m metSet) error {
			return metAll(
				metExpect(m, false, 2, "pqtunnel_tunnels_up", group...),
				metExpect(m, true, 2, "pqtunnel_handshakes_total", group...),
				metExpect(m, false, clients, "pqtunnel_streams_opened_total", "route", "web", "direction", "out"),
				metExpect(m, false, 0, "pqtunnel_streams_active", "route", "web", "direction", "out"),
				metExpect(m, true, total, "pqtunnel_bytes_total", "route", "web", "direction", "up"),
				metExpect(m, true, total, "pqtunnel_bytes_total", "route", "web", "direction", "down"),
			)
		})
		listen := metAwait(t, ctx, "listen side", lm, 10*time.Second, func(m metSet) error {
			return metAll(
				metExpect(m, false, 2, "pqtunnel_tunnels_up", group...),
				metExpect(m, true, 2, "pqtunnel_handshakes_total", group...),
				metExpect(m, true, 2, "pqtunnel_handshake_duration_seconds_count", "transport", transport),
				metExpect(m, false, clients, "pqtunnel_streams_opened_total", "route", "web", "direction", "in"),
				metExpect(m, false, 0, "pqtunnel_streams_active", "route", "web", "direction", "in"),
				metExpect(m, true, total, "pqtunnel_bytes_total", "route", "web", "direction", "up"),
				metExpect(m, true, total, "pqtunnel_bytes_total", "route", "web", "direction", "down"),
				metExpect(m, false, clients, "pqtunnel_origin_dial_duration_seconds_count", "route", "web"),
			)
		})
		for _, s := range []struct {
			who string
			m   metSet
		}{{"dial side", dial}, {"listen side", listen}} {
			if n := len(s.m.find("pqtunnel_streams_opened_total", "route", "web")); n != 1 {
				t.Errorf("%s: %d pqtunnel_streams_opened_total series for route web, want 1 direction only (%s)", s.who, n, s.m.describe("pqtunnel_streams_opened_total"))
			}
			for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
				if !s.m.has(name) {
					t.Errorf("%s: no %s", s.who, name)
				}
			}
			rtt := s.m.find("pqtunnel_quic_rtt_seconds")
			if transport == "quic" {
				if len(rtt) != 2 {
					t.Errorf("%s: %d pqtunnel_quic_rtt_seconds samples, want one per tunnel connection (2)", s.who, len(rtt))
				}
				for _, r := range rtt {
					if r.value <= 0 || r.value > 1 || r.labels["tunnel"] == "" {
						t.Errorf("%s: pqtunnel_quic_rtt_seconds%v = %g, want a tunnel label and 0 < RTT < 1s on loopback", s.who, r.labels, r.value)
					}
				}
			} else if len(rtt) != 0 {
				t.Errorf("%s: pqtunnel_quic_rtt_seconds on a tcp tunnel: %s", s.who, s.m.describe("pqtunnel_quic_rtt_seconds"))
			}
		}
		if f, _ := dial.value("pqtunnel_handshake_failures_total"); f != 0 {
			t.Errorf("dial side counted handshake failures on a clean start: %s", dial.describe("pqtunnel_handshake_failures_total"))
		}

		t.Run("origin refused", func(t *testing.T) {
			if err := expectClosedPromptly(ctx, p.dial.forward["closed"], time.Second); err != nil {
				t.Fatal(err)
			}
			metAwait(t, ctx, "listen side", lm, 5*time.Second, func(m metSet) error {
				return metAll(
					metExpect(m, false, 1, "pqtunnel_streams_failed_total", "route", "closed", "reason", "origin_refused"),
					metExpect(m, false, 1, "pqtunnel_origin_dial_duration_seconds_count", "route", "closed"),
					metExpect(m, false, 0, "pqtunnel_streams_failed_total", "route", "web"),
				)
			})
			metAwait(t, ctx, "dial side", dm, 5*time.Second, func(m metSet) error {
				return metExpect(m, false, 1, "pqtunnel_streams_failed_total", "route", "closed", "reason", "origin_refused")
			})
		})
	})
}

// metReadiness is the /readyz body.
type metReadiness struct {
	Ready   bool   `json:"ready"`
	Mode    string `json:"mode"`
	State   string `json:"state"`
	Tunnels []struct {
		Transport string `json:"transport"`
		Group     string `json:"group"`
		PQ        bool   `json:"post_quantum"`
		TLS       string `json:"tls"`
		Peer      string `json:"peer"`
		PQAuth    bool   `json:"pq_auth"`
		Remote    string `json:"remote"`
	} `json:"tunnels"`
}

func metReadyz(t *testing.T, ctx context.Context, addr string) (int, metReadiness, string) {
	t.Helper()
	code, body, err := metGet(within(t, ctx, 5*time.Second), addr, "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz at %s: %v", addr, err)
	}
	var r metReadiness
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/readyz at %s is not JSON: %v\n%s", addr, err, body)
	}
	return code, r, body
}

// metSecretLines returns the base64 lines of the private PEM blocks in the
// identity file at path.
func metSecretLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if !strings.Contains(b.Type, "PRIVATE") && !strings.Contains(b.Type, "SEED") {
			continue
		}
		enc := base64.StdEncoding.EncodeToString(b.Bytes)
		for len(enc) > 0 {
			n := min(len(enc), 64)
			if n >= 16 {
				lines = append(lines, enc[:n])
			}
			enc = enc[n:]
		}
	}
	if len(lines) == 0 {
		t.Fatalf("no private PEM block in %s", path)
	}
	return lines
}

// TestMetricsHealthReady checks /healthz and /readyz: a dial side started
// before its peer is alive but not ready (503, no tunnels); a listen side
// is ready once listening; once the tunnel is up the dial side is ready
// and describes it (transport, group, post-quantum, the peer's pin). No
// endpoint shows private key material.
func TestMetricsHealthReady(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		lm, dm := metAddr(t), metAddr(t)
		port := freePort(t)
		d := startDial(t, ctx, loopback(port), transport, nil, map[string]string{"PQT_METRICS": dm, "PQT_CONNECTIONS": "1"})

		code, body, err := metGet(within(t, ctx, 5*time.Second), dm, "/healthz")
		if err != nil || code != http.StatusOK || strings.TrimSpace(body) != "ok" {
			t.Fatalf("dial side /healthz: %d %q %v, want 200 ok", code, body, err)
		}
		code, r, raw := metReadyz(t, ctx, dm)
		if code != http.StatusServiceUnavailable || r.Ready || len(r.Tunnels) != 0 || r.Mode != "dial" {
			t.Fatalf("dial side /readyz without a tunnel: %d\n%s\nwant 503, ready false, mode dial, no tunnels", code, raw)
		}
		if n := len(d.logs(msgIs("tunnel connected"))); n != 0 {
			t.Fatalf("dial side connected to nothing: %d tunnel connected lines", n)
		}

		l := startListen(t, ctx, port, transport, map[string]string{"PQT_TARGET": o.addr(), "PQT_METRICS": lm})
		code, r, raw = metReadyz(t, ctx, lm)
		if code != http.StatusOK || !r.Ready || r.Mode != "listen" || r.State != "serving" {
			t.Errorf("listen side /readyz once listening: %d\n%s\nwant 200, ready true, mode listen, state serving", code, raw)
		}
		connected := msgIs("tunnel connected", "transport", transport, "group", "X25519MLKEM768")
		d.waitLog(t, within(t, ctx, 15*time.Second), connected)
		l.waitLog(t, within(t, ctx, 5*time.Second), connected)

		code, r, raw = metReadyz(t, ctx, dm)
		if code != http.StatusOK || !r.Ready || r.State != "serving" || len(r.Tunnels) != 1 {
			t.Fatalf("dial side /readyz with a tunnel: %d\n%s\nwant 200, ready true, one tunnel", code, raw)
		}
		tu := r.Tunnels[0]
		if tu.Transport != transport || tu.Group != "X25519MLKEM768" || !tu.PQ || !tu.PQAuth || tu.TLS != "1.3" || tu.Peer != identityNamed(t, "listen").pin || tu.Remote != l.tunnelAddr {
			t.Errorf("dial side /readyz tunnel %+v, want transport %s, group X25519MLKEM768, post_quantum and pq_auth true, tls 1.3, peer %s, remote %s",
				tu, transport, identityNamed(t, "listen").pin, l.tunnelAddr)
		}
		code, r, raw = metReadyz(t, ctx, lm)
		if code != http.StatusOK || !r.Ready || len(r.Tunnels) != 1 || r.Tunnels[0].Peer != identityNamed(t, "dial").pin || !r.Tunnels[0].PQ {
			t.Errorf("listen side /readyz with a tunnel: %d\n%s\nwant 200, ready, one post-quantum tunnel naming the dial side's pin", code, raw)
		}
		if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(21, 64<<10)); err != nil {
			t.Fatalf("traffic: %v", err)
		}

		// Nothing served shows private key material.
		secrets := append(metSecretLines(t, identityNamed(t, "listen").path), metSecretLines(t, identityNamed(t, "dial").path)...)
		for _, addr := range []string{lm, dm} {
			for _, path := range []string{"/metrics", "/readyz", "/healthz"} {
				_, body, err := metGet(within(t, ctx, 5*time.Second), addr, path)
				if err != nil {
					t.Fatalf("GET %s at %s: %v", path, addr, err)
				}
				for _, s := range secrets {
					if strings.Contains(body, s) {
						t.Errorf("%s at %s contains private key material %q", path, addr, s)
					}
				}
			}
		}
		for _, s := range []*side{l, d} {
			for _, sec := range secrets {
				if strings.Contains(s.stderr.String(), sec) {
					t.Errorf("%s logged private key material %q", s.name, sec)
				}
			}
		}
	})
}

// TestMetricsHandshakeRefusals checks that refused handshakes are counted
// by reason on the listen side: a dial side whose pin is not in PQT_PEERS
// (peer_not_allowed) and a Go TLS client offering only classical X25519
// (not_post_quantum), on each transport. The counter never runs ahead of
// the refusals logged.
func TestMetricsHandshakeRefusals(t *testing.T) {
	classical := classicalClient(t)
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		lm := metAddr(t)
		stranger := identityNamed(t, "stranger")
		// At debug each refusal has its own line: past the first per source
		// and reason they are logged at DEBUG only.
		l := startListen(t, ctx, 0, transport, map[string]string{"PQT_TARGET": o.addr(), "PQT_PEERS": stranger.pin, "PQT_METRICS": lm, "PQT_LOG_LEVEL": "debug"})

		// counted waits for reason's counter to reach at least one and
		// checks it against the refusals logged: the listen side logs each
		// before counting it, so at least as many lines must arrive.
		counted := func(t *testing.T, reason string) {
			t.Helper()
			m := metAwait(t, ctx, "listen side", lm, 10*time.Second, func(m metSet) error {
				return metExpect(m, true, 1, "pqtunnel_handshake_failures_total", "reason", reason)
			})
			v, _ := m.value("pqtunnel_handshake_failures_total", "reason", reason)
			if _, err := l.awaitLogs(within(t, ctx, 5*time.Second), int(v), msgIs("tunnel handshake refused", "reason", reason)); err != nil {
				t.Errorf("pqtunnel_handshake_failures_total{reason=%q} = %g but fewer refusals logged: %v", reason, v, err)
			}
			t.Logf("pqtunnel_handshake_failures_total{reason=%q} = %g", reason, v)
		}

		t.Run("peer_not_allowed", func(t *testing.T) {
			d := startDial(t, ctx, l.tunnelAddr, transport, nil, map[string]string{"PQT_CONNECTIONS": "1"})
			l.waitLog(t, within(t, ctx, 15*time.Second), msgIs("tunnel handshake refused", "reason", "peer_not_allowed"))
			counted(t, "peer_not_allowed")
			d.signal(t, os.Interrupt)
			d.wait(t, within(t, ctx, 10*time.Second))
		})

		t.Run("not_post_quantum", func(t *testing.T) {
			hctx := within(t, ctx, 10*time.Second)
			if transport == "tcp" {
				d := tls.Dialer{Config: classical.Clone()}
				c, err := d.DialContext(hctx, "tcp", l.tunnelAddr)
				if err == nil {
					_ = c.Close() // it should not exist
					t.Fatal("a classical-only TLS client completed a handshake with a strict listen side")
				}
			} else {
				conn, err := quic.DialAddr(hctx, l.tunnelAddr, classical.Clone(), &quic.Config{HandshakeIdleTimeout: 5 * time.Second})
				if err == nil {
					_ = conn.CloseWithError(0, "") // it should not exist
					t.Fatal("a classical-only QUIC client completed a handshake with a strict listen side")
				}
			}
			l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel handshake refused", "reason", "not_post_quantum"))
			counted(t, "not_post_quantum")
		})
		if n := o.acceptCount(); n != 0 {
			t.Errorf("origin accepted %d connections from refused peers", n)
		}
	})
}

// TestMetricsBarePort checks that PQT_METRICS with a bare port binds the
// IPv4 loopback address only.
func TestMetricsBarePort(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	port := freePort(t)
	l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": loopback(freePort(t)), "PQT_METRICS": strconv.Itoa(port)})
	line := l.waitLog(t, within(t, ctx, 5*time.Second), msgIs("metrics listening"))
	if got := line.str("addr"); got != loopback(port) {
		t.Errorf("metrics listening on %q, want %s", got, loopback(port))
	}
	code, body, err := metGet(within(t, ctx, 5*time.Second), loopback(port), "/healthz")
	if err != nil || code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("GET /healthz on 127.0.0.1:%d: %d %q %v, want 200 ok", port, code, body, err)
	}
	// Not on every address: IPv6 loopback (where present) is refused.
	var d net.Dialer
	if c, err := d.DialContext(within(t, ctx, 2*time.Second), "tcp", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
		_ = c.Close() // it should not exist
		t.Errorf("PQT_METRICS=%d also accepts on [::1]:%d; a bare port should bind 127.0.0.1 only", port, port)
	}
	if _, _, err := metScrape(within(t, ctx, 5*time.Second), loopback(port)); err != nil {
		t.Errorf("/metrics on the bare port: %v", err)
	}
}

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/proxy"
)

func sampleStatus() proxy.Status {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	rtt := 0.00042
	return proxy.Status{
		Mode: proxy.ModeListen, State: "serving", Time: now, HistoryInterval: 2,
		Tunnels: []proxy.TunnelDetail{
			{ID: 3, Peer: "pqt1_abc", PQAuth: true, Transport: "quic", Group: "X25519MLKEM768", PQ: true, Sig: "ML-DSA-65",
				Remote: "127.0.0.1:50000", Since: now.Add(-90 * time.Second), Uptime: 90, RTT: &rtt, Streams: 2,
				BytesSent: 3 << 20, BytesReceived: 1536, History: []int64{0, 100, 800, 400}},
			{ID: 4, Peer: "web.example", Transport: "tcp", Group: "X25519", Sig: "ECDSA-P256", Remote: "[::1]:1", Uptime: 5},
		},
		Routes: []proxy.RouteStatus{
			{Kind: proxy.KindTarget, Name: "redis", Addr: "127.0.0.1:6379", Clients: 2,
				LastDial: &proxy.DialResult{Time: now.Add(-12 * time.Second), OK: true, Seconds: 0.00031}, State: proxy.TargetUp},
			{Kind: proxy.KindTarget, Name: "pg", Addr: "127.0.0.1:5432",
				LastDial: &proxy.DialResult{Time: now.Add(-3 * time.Second), Error: "connection refused", Probe: true},
				State:    proxy.TargetDown, FailingSince: new(now.Add(-14 * time.Second))},
			{Kind: proxy.KindTarget, Name: "idle", Addr: "127.0.0.1:1", State: proxy.TargetUnknown},
		},
		Limits: proxy.Limits{MaxConnections: 256, MaxStreams: 4096, MaxTotalStreams: -1, TotalStreams: 2,
			HandshakeTimeout: "10s", DialTimeout: "5s", IdleTimeout: "8s", KeepAlive: "2s", DrainTimeout: "30s"},
	}
}

func TestPrintStatus(t *testing.T) {
	var b bytes.Buffer
	if err := printStatus(&b, sampleStatus()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Log("\n" + out)
	lines := strings.Split(out, "\n")
	for _, l := range lines {
		if strings.HasSuffix(l, " ") {
			t.Errorf("trailing blanks in %q", l)
		}
	}
	if lines[0] != "pqtunnel listen side, serving: 2 tunnel connections up, 2 streams open" {
		t.Errorf("summary = %q", lines[0])
	}
	for _, want := range []string{
		"pqt1_abc", "quic", "X25519MLKEM768", "ML-DSA-65", "127.0.0.1:50000", "420µs", "1m30s", "3.0 MiB", "1.5 KiB",
		"web.example (classical auth)", "X25519 (NOT post-quantum)",
		"ok in 310µs, 12s ago", "FAILED 3s ago: connection refused (readiness probe)", "none yet",
		"down for 14s", "STATE",
		"2 of at most 256", "2 (no bound)", "PQT_MAX_TOTAL_STREAMS", "2s, 8s",
		"LAST 40s", "                ▁▂█▅",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Columns line up: each tunnel row starts its GROUP where the header does.
	var header string
	for _, l := range lines {
		if strings.HasPrefix(l, "  ID ") {
			header = l
		}
	}
	col := strings.Index(header, "GROUP")
	for _, l := range lines {
		if strings.HasPrefix(l, "  3 ") && strings.Index(l, "X25519MLKEM768") != col {
			t.Errorf("GROUP column at %d in the header, %d in %q", col, strings.Index(l, "X25519MLKEM768"), l)
		}
	}
	if col < 0 {
		t.Errorf("no tunnel header in\n%s", out)
	}
}

func TestStatusURL(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"9090", "http://127.0.0.1:9090/status.json"},
		{":9090", "http://127.0.0.1:9090/status.json"},
		{"0.0.0.0:9090", "http://127.0.0.1:9090/status.json"},
		{"[::]:9090", "http://[::1]:9090/status.json"},
		{"10.0.0.5:80", "http://10.0.0.5:80/status.json"},
	} {
		got, err := statusURL(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("statusURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	if _, err := statusURL(""); !errors.Is(err, errNoMetrics) {
		t.Errorf("statusURL(\"\") = %v, want errNoMetrics", err)
	}
}

func TestStatusCommand(t *testing.T) {
	body, err := json.Marshal(sampleStatus())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status.json" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	env := map[string]string{"PQT_METRICS": addr}

	var out, errOut bytes.Buffer
	if code := run([]string{"status"}, env, &out, &errOut); code != 0 || !strings.Contains(out.String(), "pqt1_abc") {
		t.Errorf("status: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	out.Reset()
	if code := run([]string{"status", "--json"}, env, &out, &errOut); code != 0 || !bytes.Equal(out.Bytes(), body) {
		t.Errorf("status --json: exit %d, stdout %q; want the body as served", code, out.String())
	}

	for _, tt := range []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string
	}{
		{"unset", []string{"status"}, map[string]string{}, 1, "PQT_METRICS"},
		{"unreachable", []string{"status"}, map[string]string{"PQT_METRICS": closedPort(t)}, 1, "not reachable"},
		{"unknown flag", []string{"status", "--bogus"}, env, 2, "usage: pqtunnel status"},
		{"argument", []string{"status", "extra"}, env, 2, "usage: pqtunnel status"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(tt.args, tt.env, &out, &errOut)
			if code != tt.code || !strings.Contains(errOut.String(), tt.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errOut.String(), tt.code, tt.want)
			}
		})
	}
	out.Reset()
	if code := run([]string{"status", "--help"}, env, &out, &errOut); code != 0 || !strings.Contains(out.String(), "-json") {
		t.Errorf("status --help: exit %d, %q", code, out.String())
	}
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func TestSparkline(t *testing.T) {
	long := make([]int64, 60)
	long[59] = 10
	for _, tt := range []struct {
		in   []int64
		want string
	}{
		{nil, strings.Repeat(" ", sparkWidth)},
		{[]int64{0, 0}, strings.Repeat(" ", sparkWidth-2) + "▁▁"},
		{[]int64{1, 3, 6}, strings.Repeat(" ", sparkWidth-3) + "▃▅█"},
		{long, strings.Repeat("▁", sparkWidth-1) + "█"},
	} {
		if got := sparkline(tt.in); got != tt.want {
			t.Errorf("sparkline(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

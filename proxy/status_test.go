package proxy

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// waitStatus polls e's status until ok accepts it, and fails after 10 s
// with the last status seen.
func waitStatus(t *testing.T, e *Engine, what string, ok func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := e.Status()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("status never showed %s; last:\n%s", what, b)
		}
		time.Sleep(10 * time.Millisecond) // polling a snapshot; nothing to wait on
	}
}

func routeOf(st Status, kind, name string) RouteStatus {
	for _, r := range st.Routes {
		if r.Kind == kind && r.Name == name {
			return r
		}
	}
	return RouteStatus{}
}

func TestStatusShowsTunnelsRoutesAndLimits(t *testing.T) {
	tr := memtransport.New()
	echo := testutil.EchoOrigin(t)
	refused := testutil.ClosedAddr(t)
	listenStore, dialStore := pinned.Stores(t, wire.ALPN)
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tr,
		Target: []Route{{Name: "echo", Addr: echo}, {Name: "refused", Addr: refused}},
		TLS:    listenStore, MaxConnections: 7,
	})
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: tr, Connections: 1,
		Forward: []Route{{Name: "echo", Addr: "127.0.0.1:0"}, {Name: "refused", Addr: "127.0.0.1:0"}},
		TLS:     dialStore, MaxTotalStreams: 100, Mux: transport.Config{MaxStreams: 50},
	})
	waitTunnels(t, dial)
	waitTunnels(t, listen)

	before := time.Now()
	const size = 100 << 10
	if err := echoThrough(dial.ForwardAddrs()[0].String(), make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	expectRefused(t, dial.ForwardAddrs()[1].String())

	// The listen side counts payload only: exactly what was echoed, each way.
	ls := waitStatus(t, listen, "the echoed bytes and both dials", func(st Status) bool {
		return len(st.Tunnels) == 1 && st.Tunnels[0].BytesReceived == size && st.Tunnels[0].BytesSent == size &&
			routeOf(st, KindTarget, "refused").LastDial != nil && routeOf(st, KindTarget, "echo").Clients == 0
	})
	lt := ls.Tunnels[0]
	if lt.Peer != dialStore.Authenticator().Name() || !lt.PQAuth {
		t.Errorf("listen side's peer = %q (pq_auth %v), want the dial side's pin", lt.Peer, lt.PQAuth)
	}
	if lt.Transport != tr.Name() || lt.Group != "X25519MLKEM768" || !lt.PQ {
		t.Errorf("listen side's tunnel = %s %s (pq %v), want %s X25519MLKEM768", lt.Transport, lt.Group, lt.PQ, tr.Name())
	}
	if lt.RTT != nil {
		t.Errorf("rtt = %v over %s, which measures none", *lt.RTT, tr.Name())
	}
	if ls.Mode != ModeListen || ls.State != "serving" || ls.Limits.MaxConnections != 7 {
		t.Errorf("listen side: mode %s state %s max_connections %d", ls.Mode, ls.State, ls.Limits.MaxConnections)
	}
	ok := routeOf(ls, KindTarget, "echo")
	if ok.Addr != echo || ok.LastDial == nil || !ok.LastDial.OK || ok.LastDial.Time.Before(before) {
		t.Errorf("echo target = %+v, want a successful dial of %s after %v", ok, echo, before)
	}
	bad := routeOf(ls, KindTarget, "refused").LastDial
	if bad.OK || !strings.Contains(bad.Error, "refused") {
		t.Errorf("refused target's last dial = %+v, want a failure saying refused", bad)
	}

	ds := waitStatus(t, dial, "the sent bytes", func(st Status) bool {
		// It may have sent the refused client's "hello?" too, and it
		// received the stream responses.
		if len(st.Tunnels) != 1 {
			return false
		}
		sent := st.Tunnels[0].BytesSent
		return (sent == size || sent == size+int64(len("hello?"))) && st.Tunnels[0].BytesReceived > size
	})
	if ds.Tunnels[0].Peer != listenStore.Authenticator().Name() {
		t.Errorf("dial side's peer = %q, want the listen side's pin", ds.Tunnels[0].Peer)
	}
	l := ds.Limits
	if l.Connections != 1 || l.MaxStreams != 50 || l.MaxTotalStreams != 100 || l.DialTimeout != "5s" || l.IdleTimeout != "8s" {
		t.Errorf("dial side's limits = %+v", l)
	}
	if r := routeOf(ds, KindForward, "echo"); r.Addr != dial.ForwardAddrs()[0].String() || r.LastDial != nil {
		t.Errorf("forward route = %+v", r)
	}

	// A client held open shows on its route, its tunnel and the process's streams.
	c, err := net.Dial("tcp", dial.ForwardAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, dial, "one client open", func(st Status) bool {
		return routeOf(st, KindForward, "echo").Clients == 1 && len(st.Tunnels) == 1 && st.Tunnels[0].Streams == 1 && st.Limits.TotalStreams == 1
	})
	waitStatus(t, listen, "one stream delivered", func(st Status) bool {
		return routeOf(st, KindTarget, "echo").Clients == 1
	})
	_ = c.Close()
	waitStatus(t, dial, "the client gone", func(st Status) bool {
		return routeOf(st, KindForward, "echo").Clients == 0 && len(st.Tunnels) == 1 && st.Tunnels[0].Streams == 0 && st.Limits.TotalStreams == 0
	})
}

func TestStatusHandlers(t *testing.T) {
	listenStore, _ := pinned.Stores(t, wire.ALPN)
	e := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: memtransport.New(),
		Target: []Route{{Name: "", Addr: "127.0.0.1:1"}}, TLS: listenStore,
	})
	srv := httptest.NewServer(e.Handler())
	defer srv.Close()

	res, err := http.Get(srv.URL + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	var st Status
	err = json.NewDecoder(res.Body).Decode(&st)
	_ = res.Body.Close()
	if err != nil || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status.json: %v (Content-Type %q)", err, res.Header.Get("Content-Type"))
	}
	if st.Mode != ModeListen || len(st.Routes) != 1 || st.Routes[0].Name != "default" || st.Tunnels == nil {
		t.Errorf("status.json = %+v", st)
	}

	res, err = http.Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	page, err := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(page), `fetch("status.json"`) {
		t.Errorf("status page: Content-Type %q, %d bytes without its fetch of status.json", res.Header.Get("Content-Type"), len(page))
	}
	for _, external := range []string{"http://", "https://", "//cdn"} {
		if i := strings.Index(string(page), external); i >= 0 && !strings.HasPrefix(string(page[i:]), "http://www.w3.org/2000/svg") {
			t.Errorf("status page refers to %q: it must work offline", page[i:min(i+40, len(page))])
		}
	}
}

func TestTrafficHistory(t *testing.T) {
	var tr traffic
	if h := tr.history(); len(h) != 0 {
		t.Fatalf("history before a sample = %v", h)
	}
	// Each interval carries its number of bytes, split both ways.
	for i := 1; i <= historyLen+5; i++ {
		tr.sent.Add(int64(i))
		tr.received.Add(int64(i))
		tr.sample()
		h := tr.history()
		if len(h) != min(i, historyLen) || h[len(h)-1] != int64(2*i) {
			t.Fatalf("after %d samples: %d intervals ending %d; want %d ending %d", i, len(h), h[len(h)-1], min(i, historyLen), 2*i)
		}
	}
	h := tr.history()
	for i := 1; i < len(h); i++ {
		if h[i] != h[i-1]+2 {
			t.Fatalf("history not oldest first: %v", h)
		}
	}
}

package check_test

import (
	"context"
	"crypto/tls"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/check"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/proxy"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// probeLog records the probes CheckPeer runs, by the groups each offered.
type probeLog struct {
	mu      sync.Mutex
	offered []string
}

func (l *probeLog) Probing(tr transport.Transport, groups []tls.CurveID, classical bool) func(check.Probe) {
	return func(p check.Probe) {
		l.mu.Lock()
		defer l.mu.Unlock()
		outcome := "ok"
		if p.Err != nil {
			outcome = "fail"
		}
		l.offered = append(l.offered, tr.Name()+" "+hybridtls.GroupNames(groups)+" "+outcome)
	}
}

// withGroups is store's material under a strict policy of groups.
func withGroups(t *testing.T, store *hybridtls.Store, groups ...tls.CurveID) *hybridtls.Store {
	t.Helper()
	pol := store.Policy()
	pol.Groups = groups
	s, err := hybridtls.NewStore(pol, store.Authenticator())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runListen runs a listen side of cfg on a loopback port, with target
// probes off, until the test ends.
func runListen(t *testing.T, cfg proxy.Config) *proxy.Engine {
	t.Helper()
	cfg.Mode, cfg.Tunnel, cfg.ReadyTargetDown = proxy.ModeListen, []string{"127.0.0.1:0"}, -1
	listen, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- listen.Run(context.Background()) }()
	t.Cleanup(func() {
		listen.Close()
		if err := <-done; !errors.Is(err, proxy.ErrClosed) {
			t.Errorf("listen side's Run returned %v, want ErrClosed", err)
		}
	})
	return listen
}

// listenPeer runs a listen side over tr with store and an echo target.
func listenPeer(t *testing.T, tr transport.Transport, store *hybridtls.Store) string {
	t.Helper()
	return runListen(t, proxy.Config{Transport: tr, TLS: store, Target: []proxy.Route{{Name: "echo", Addr: testutil.EchoOrigin(t)}}}).TunnelAddr().String()
}

// A peer that accepts none of the offered groups gets each group alone,
// then the hybrid groups not offered, and the advice names the one it takes.
func TestCheckPeerLooksForTheGroupThePeerTakes(t *testing.T) {
	tr := memtransport.New()
	dialStore, listenStore := pinned.Stores(t, wire.ALPN)
	peer := listenPeer(t, tr, withGroups(t, listenStore, tls.SecP384r1MLKEM1024))
	cfg := check.Config{
		TLS: withGroups(t, dialStore, tls.X25519MLKEM768, tls.SecP256r1MLKEM768), Mux: transport.Config{HandshakeTimeout: 10 * time.Second},
		SettingName: func(s string) string { return "PQT_" + strings.ToUpper(s) },
	}
	var log probeLog
	r := check.CheckPeer(context.Background(), cfg, peer, check.Plan{Transports: []transport.Transport{tr}, Configured: tr, Watch: &log})
	want := []string{
		"mem X25519MLKEM768,SecP256r1MLKEM768 fail",
		"mem X25519MLKEM768 fail",
		"mem SecP256r1MLKEM768 fail",
		"mem SecP384r1MLKEM1024 ok",
	}
	if !slices.Equal(log.offered, want) {
		t.Errorf("probes %q, want %q", log.offered, want)
	}
	if r.Connects || r.Works["mem"] {
		t.Errorf("report %+v: want mem not connecting", r)
	}
	if !slices.ContainsFunc(r.Advice, func(a string) bool {
		return strings.HasPrefix(a, "mem: the peer accepts only SecP384r1MLKEM1024; add it to PQT_GROUPS")
	}) {
		t.Errorf("advice %q does not name the group the peer takes", r.Advice)
	}
}

// A peer that connects is probed with each group alone too; the routes it
// lacks are the report's Missing.
func TestCheckPeerReportsMissingRoutes(t *testing.T) {
	tr := memtransport.New()
	dialStore, listenStore := pinned.Stores(t, wire.ALPN)
	peer := listenPeer(t, tr, listenStore)
	cfg := check.Config{TLS: dialStore, Mux: transport.Config{HandshakeTimeout: 10 * time.Second},
		Forward: []check.Route{{Name: "echo"}, {Name: "pg"}}}
	var log probeLog
	r := check.CheckPeer(context.Background(), cfg, peer, check.Plan{Transports: []transport.Transport{tr}, Configured: tr, Watch: &log})
	if len(log.offered) != 1+len(hybridtls.DefaultGroups) {
		t.Errorf("probes %q, want the groups together and each alone", log.offered)
	}
	if !r.Connects || !r.Works["mem"] || len(r.Advice) != 0 {
		t.Errorf("report %+v: want mem connecting without advice", r)
	}
	if !slices.Equal(r.Missing, []string{"pg"}) || len(r.Routes) != 2 {
		t.Errorf("routes %+v, missing %q; want pg missing", r.Routes, r.Missing)
	}
}

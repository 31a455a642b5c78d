package proxy

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/route"
	"github.com/pqtunnel/pqtunnel/route/tcproute"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// kindShout is the wire value of shoutKind, a route kind of the tests' own.
const kindShout wire.Kind = 1

// shoutKind's far side dials nothing: it answers the peer and sends back
// the route's name and what the stream brought, upper-cased. Its forward
// side copies as the TCP kind does.
type shoutKind struct{}

var _ route.Kind = shoutKind{}

func (shoutKind) Wire() wire.Kind { return kindShout }

func (shoutKind) Forward(client route.Conn, l route.Local) {
	st, err := l.Open(nil)
	if err != nil {
		return
	}
	l.Carry(func() (int64, int64, error) { return tcproute.Join(client, st, l.IdleTimeout()) })
}

func (shoutKind) Handle(st route.Conn, f route.Far) {
	if f.Accept() != nil {
		return
	}
	f.Carry(func() (int64, int64, error) {
		defer st.Close()
		in, err := io.ReadAll(st)
		if err != nil {
			st.Abort()
			return int64(len(in)), 0, err
		}
		n, err := st.Write(append([]byte(f.Request().Route+": "), bytes.ToUpper(in)...))
		if err == nil {
			err = st.CloseWrite()
		}
		return int64(len(in)), int64(n), err
	})
}

// A second route kind is one registration (Config.Kinds) on each side: its
// streams go end to end over a tunnel beside the TCP kind's, by the kind
// each route names; a stream whose kind is not its route's is refused with
// StatusUnknownKind and the tunnel stays up.
func TestEngineDeliversARegisteredKind(t *testing.T) {
	mem := memtransport.New()
	listenStore, dialStore := pinned.Stores(t, wire.ALPN)
	kinds := []route.Kind{shoutKind{}}
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: mem, TLS: listenStore, Kinds: kinds,
		Target: []Route{{Name: "shout", Kind: kindShout}, {Name: "echo", Addr: testutil.EchoOrigin(t)}},
	})
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: mem, TLS: dialStore, Kinds: kinds, Connections: 1,
		Forward: []Route{{Name: "shout", Kind: kindShout, Addr: "127.0.0.1:0"}, {Name: "echo", Addr: "127.0.0.1:0"}},
	})
	waitTunnels(t, dial)
	shout, echo := dial.ForwardAddrs()[0].String(), dial.ForwardAddrs()[1].String()

	got, err := roundTrip(shout, []byte("hello, kinds"))
	if want := "shout: HELLO, KINDS"; err != nil || string(got) != want {
		t.Fatalf("through the shout route: %q, %v; want %q", got, err, want)
	}
	if err := echoThrough(echo, []byte("tcp beside it")); err != nil {
		t.Fatalf("through the TCP route beside it: %v", err)
	}

	// Streams of each kind for a route of the other.
	s := peerSession(t, mem, listen, dialStore)
	for _, tt := range []struct {
		kind  wire.Kind
		route string
		want  wire.Status
	}{{wire.KindTCP, "shout", wire.StatusUnknownKind}, {kindShout, "echo", wire.StatusUnknownKind}, {kindShout, "shout", wire.StatusOK}} {
		resp, err := askStream(t, s, wire.Request{Kind: tt.kind, Route: tt.route, Client: "192.0.2.1:1", Server: "192.0.2.2:2"})
		if err != nil || resp.Status != tt.want {
			t.Errorf("kind %s for route %s: response %+v, %v; want %s", tt.kind, tt.route, resp, err, tt.want)
		}
	}
}

// New refuses a route of a kind no registered kind delivers, and a kind
// whose wire value is taken.
func TestNewChecksRouteKinds(t *testing.T) {
	_, dialStore := pinned.Stores(t, wire.ALPN)
	for _, tt := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"unregistered", Config{Forward: []Route{{Name: "shout", Kind: kindShout, Addr: "127.0.0.1:0"}}}, "Forward"},
		{"taken", Config{Kinds: []route.Kind{tcproute.Kind{}}}, "Kinds"},
		{"route query", Config{Kinds: []route.Kind{queryKind{}}}, "Kinds"},
	} {
		tt.cfg.Mode, tt.cfg.Tunnel, tt.cfg.Transport, tt.cfg.TLS = ModeDial, []string{"127.0.0.1:1"}, memtransport.New(), dialStore
		e, err := New(tt.cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tt.field {
			if e != nil {
				e.Close()
			}
			t.Errorf("%s: New = %v, want a ConfigError in %s", tt.name, err, tt.field)
		}
	}
}

// queryKind claims the route query's wire value.
type queryKind struct{ shoutKind }

func (queryKind) Wire() wire.Kind { return wire.KindRouteQuery }

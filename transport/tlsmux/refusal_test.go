package tlsmux

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	pinnedtest "github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// crypto/tls refuses a hello without a common group with a bare error; the
// handshake_failure alert the record layer saw makes it no_common_group on
// the server, a refusal the Store has logged already, and the client hears
// the alert.
func TestServerGroupRefusalIsClassified(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	cc.TLS.CurvePreferences = []tls.CurveID{tls.X25519}
	failed := make(chan error, 1)
	sc.OnHandshakeError = func(_ net.Addr, err error) { failed <- err }
	ln := transporttest.Listen(t, Transport{}, sc)
	s, err := Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err == nil {
		_ = s.Close()
		t.Fatal("a classical client connected to a strict server")
	}
	var he *transport.HandshakeError
	if !errors.As(err, &he) || he.Reason != transport.ReasonNoCommonGroup || he.Stage != transport.StageTLS || he.Transport != Name {
		t.Errorf("client error %v is %+v, want a tls-stage no_common_group HandshakeError of %s", err, he, Name)
	}
	select {
	case err := <-failed:
		if !errors.As(err, &he) || he.Reason != transport.ReasonNoCommonGroup {
			t.Fatalf("server error %v: reason %+v, want no_common_group", err, he)
		}
		if !hybridtls.LoggedRefusal(string(he.Reason)) {
			t.Error("the server's refusal would be logged twice")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnHandshakeError was not called")
	}
}

func TestScanAlert(t *testing.T) {
	hs := []byte{22, 3, 3, 0, 3, 1, 2, 3}
	alert := []byte{21, 3, 3, 0, 2, 2, 40}
	for _, tt := range []struct {
		name string
		p    []byte
		want int32
	}{
		{"alert alone", alert, 41},
		{"after a handshake record", append(append([]byte{}, hs...), alert...), 41},
		{"no alert", hs, 0},
		{"truncated", alert[:6], 0},
		{"encrypted record", []byte{23, 3, 3, 0, 2, 2, 40}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var c recordConn
			c.scanAlert(tt.p)
			if got := c.alert.Load(); got != tt.want {
				t.Errorf("alert = %d, want %d", got, tt.want)
			}
		})
	}
}

// A peer of another protocol version offers another ALPN: both sides say
// so, rather than "tls".
func TestALPNMismatchIsVersionMismatch(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	cc.TLS.NextProtos = []string{"pqtunnel-transport-test/0"}
	failed := make(chan error, 1)
	sc.OnHandshakeError = func(_ net.Addr, err error) { failed <- err }
	ln := transporttest.Listen(t, Transport{}, sc)
	s, err := Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
	if err == nil {
		_ = s.Close()
		t.Fatal("peers without a common ALPN connected")
	}
	if r := transport.Classify(err); r != transport.ReasonVersionMismatch {
		t.Errorf("client reason %q for %v, want version_mismatch", r, err)
	}
	select {
	case err := <-failed:
		if r := transport.Classify(err); r != transport.ReasonVersionMismatch {
			t.Errorf("server reason %q for %v, want version_mismatch", r, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnHandshakeError was not called")
	}
}

// A TLS 1.3 client learns that its certificate was refused only after it
// has finished the handshake and sent its proof. The server drains that
// proof before closing, so that the client reads the alert instead of a
// reset, every time: here the proof is 64 KiB, so that it is still
// arriving when the server refuses.
func TestClientReadsRefusalOfItsCertificate(t *testing.T) {
	_, sc := transporttest.Configs(t)
	_, server := pinnedtest.Stores(t, transporttest.ALPN)
	stranger, err := pinned.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	// The stranger accepts the server, which does not accept it.
	cs, err := hybridtls.NewStore(server.Policy(), &pinned.Authenticator{Identity: stranger, Peers: []pinned.Pin{server.Authenticator().(*pinned.Authenticator).Identity.Pin}})
	if err != nil {
		t.Fatal(err)
	}
	sc.TLS, sc.Authenticate = server.ServerConfig(), transporttest.StoreAuth(server)
	cc := &transport.Config{TLS: cs.ClientConfig(), HandshakeTimeout: 10 * time.Second}
	cc.Authenticate = func(_ *tls.ConnectionState, rw io.ReadWriter, _ bool) (transport.Peer, error) {
		if _, err := rw.Write(make([]byte, 64<<10)); err != nil {
			return transport.Peer{}, fmt.Errorf("send proof: %w", err)
		}
		_, err := rw.Read(make([]byte, 1))
		return transport.Peer{}, fmt.Errorf("read proof: %w", err)
	}
	ln := transporttest.Listen(t, Transport{}, sc)
	for i := range 20 {
		s, err := Dial(transporttest.Ctx(t), ln.Addr().String(), cc)
		if err == nil {
			_ = s.Close()
			t.Fatal("a refused client connected")
		}
		if r := transport.Classify(err); r != transport.ReasonRejectedByPeer {
			t.Fatalf("attempt %d: client reason %q for %v, want rejected_by_peer", i, r, err)
		}
	}
}

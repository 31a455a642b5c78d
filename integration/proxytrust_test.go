package integration

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/pqtunnel/pqtunnel/proxy"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
	"github.com/pqtunnel/pqtunnel/wire"
)

// rogueSession is a tunnel session of the "dial" identity built from the
// libraries, not the binary, so that a test can send preambles the binary
// never writes.
func rogueSession(t *testing.T, ctx context.Context, tr, addr string) transport.Session {
	t.Helper()
	var impl transport.Transport = tlsmux.Transport{}
	if tr == "quic" {
		impl = quic.Transport{}
	}
	store := dialStore(t)
	s, err := impl.Dial(ctx, addr, &transport.Config{TLS: store.ClientConfig(), Authenticate: transporttest.StoreAuth(store)})
	if err != nil {
		t.Fatalf("rogue peer: tunnel handshake with a valid identity: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// rogueStream opens a stream with the given preamble and returns the answer.
func rogueStream(t *testing.T, ctx context.Context, s transport.Session, req wire.Request, payload []byte) (wire.Response, transport.Stream) {
	t.Helper()
	st, err := s.OpenStream(ctx)
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl) // bounds a failing test
	}
	hdr, err := wire.AppendRequest(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(append(hdr, payload...)); err != nil {
		t.Fatalf("write preamble: %v", err)
	}
	resp, err := wire.ReadResponse(st)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	return resp, st
}

// TestProxyProtocolRefusesUnparsableAddress runs a listen side with
// PQT_PROXY_PROTOCOL=v2 and attacks it with an authenticated peer that
// writes addresses the binary never would: each such stream is refused with
// the bad-preamble answer and one log line, the origin sees no connection
// (never a PROXY UNKNOWN or LOCAL header), and on the same tunnel a stream
// with real addresses reaches the origin with them and, in the PP2 TLV
// 0xE0, the name the listen side gives the peer.
func TestProxyProtocolRefusesUnparsableAddress(t *testing.T) {
	ctx := testContext(t, 90*time.Second)
	o, seen := ppStartOrigin(t)
	l := startListen(t, ctx, 0, "auto", map[string]string{
		"PQT_TARGET":         "raw=" + o.addr(),
		"PQT_PROXY_PROTOCOL": "v2",
		"PQT_PEERS":          "app1=" + identityNamed(t, "dial").pin,
	})
	bad := []wire.Request{
		{Route: "raw", Client: "unknown", Server: "127.0.0.1:80"},
		{Route: "raw", Client: "203.0.113.7", Server: "127.0.0.1:80"},
		{Route: "raw", Client: "example.com:443", Server: "127.0.0.1:80"},
		{Route: "raw", Client: "127.0.0.1:1\r\nPROXY TCP4 203.0.113.7 127.0.0.1 1 2", Server: "127.0.0.1:80"},
		{Route: "raw", Client: "127.0.0.1:5000", Server: ""},
	}
	refusals := 0
	transports(t, func(t *testing.T, tr string) {
		ctx := within(t, ctx, 30*time.Second)
		s := rogueSession(t, ctx, tr, l.tunnelAddr)
		for _, req := range bad {
			resp, st := rogueStream(t, ctx, s, req, []byte("GET / HTTP/1.0\r\n\r\n"))
			st.Reset()
			if resp.Status != wire.StatusBadPreamble {
				t.Errorf("client %q server %q: answer %s (%s), want %s", req.Client, req.Server, resp.Status, resp.Message, wire.StatusBadPreamble)
			}
			refusals++
		}
		select {
		case <-s.Done():
			t.Fatal("the tunnel closed after the refusals; it must stay up")
		default:
		}
		// The same tunnel carries a well-formed stream, addresses and peer name intact.
		payload := randomBytes(77, 4096)
		resp, st := rogueStream(t, ctx, s, wire.Request{Route: "raw", Client: "198.51.100.9:40000", Server: "192.0.2.80:443"}, payload)
		if resp.Status != wire.StatusOK {
			t.Fatalf("well-formed stream: answer %s (%s)", resp.Status, resp.Message)
		}
		if err := st.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, st) // the origin's echo; its content is checked by TestProxyProtocol
		var got ppSeen
		select {
		case got = <-seen:
		case <-ctx.Done():
			t.Fatal("origin saw no connection for the well-formed stream")
		}
		if got.err != nil {
			t.Fatalf("origin: %v", got.err)
		}
		h := got.header
		if h.Command != proxyproto.PROXY || h.SourceAddr.String() != "198.51.100.9:40000" || h.DestinationAddr.String() != "192.0.2.80:443" {
			t.Errorf("origin read %v %s -> %s, want PROXY 198.51.100.9:40000 -> 192.0.2.80:443", h.Command, h.SourceAddr, h.DestinationAddr)
		}
		tlvs, err := h.TLVs()
		if err != nil {
			t.Fatal(err)
		}
		var peer string
		for _, tlv := range tlvs {
			if tlv.Type == proxy.PP2TypePeer {
				peer = string(tlv.Value)
			}
		}
		if peer != "app1" {
			t.Errorf("PP2 TLV %#x = %q, want the peer's configured name app1 (TLVs %v)", proxy.PP2TypePeer, peer, tlvs)
		}
		if err := sameBytes(got.payload, payload); err != nil {
			t.Errorf("payload: %v", err)
		}
	})
	if n := o.acceptCount(); n != 2 {
		t.Errorf("origin accepted %d connections, want 2 (the well-formed stream per transport)", n)
	}
	lines := l.logs(msgIs("stream refused", "reason", "bad preamble"))
	if len(lines) == 0 || len(lines) > refusals {
		t.Errorf("%d 'stream refused' lines with reason bad preamble for %d refusals, want between 1 and %d", len(lines), refusals, refusals)
	}
	if len(lines) > 0 && lines[0].str("peer") != "app1" {
		t.Errorf("refusal line names peer %q, want app1", lines[0].str("peer"))
	}
}

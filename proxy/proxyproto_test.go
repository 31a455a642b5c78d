package proxy

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/pqtunnel/pqtunnel/internal/logtest"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

func TestPreambleAddrs(t *testing.T) {
	for _, tt := range []struct {
		client, server string
		ok             bool
		wantClient     string
	}{
		{"192.0.2.1:1234", "192.0.2.2:80", true, "192.0.2.1:1234"},
		{"[2001:db8::1]:1234", "[2001:db8::2]:443", true, "[2001:db8::1]:1234"},
		{"[::ffff:192.0.2.1]:1234", "192.0.2.2:80", true, "192.0.2.1:1234"},
		// A client of a Unix socket forward: no address, the zero AddrPort.
		{wire.AddrLocal, wire.AddrLocal, true, "invalid AddrPort"},
		{"Local", "192.0.2.2:80", false, ""},
		{"", "192.0.2.2:80", false, ""},
		{"192.0.2.1:1234", "", false, ""},
		{"unknown", "192.0.2.2:80", false, ""},
		{"example.com:80", "192.0.2.2:80", false, ""},
		{"192.0.2.1", "192.0.2.2:80", false, ""},
		{"192.0.2.1:99999", "192.0.2.2:80", false, ""},
		{"192.0.2.1:1\r\nPROXY TCP4 203.0.113.7", "192.0.2.2:80", false, ""},
	} {
		client, _, err := preambleAddrs(wire.Request{Client: tt.client, Server: tt.server})
		if tt.ok != (err == nil) {
			t.Errorf("preambleAddrs(%q, %q) error %v, want ok=%v", tt.client, tt.server, err, tt.ok)
			continue
		}
		if err != nil && !errors.Is(err, errBadAddress) {
			t.Errorf("preambleAddrs(%q, %q) error %v does not wrap errBadAddress", tt.client, tt.server, err)
		}
		if tt.ok && client.String() != tt.wantClient {
			t.Errorf("preambleAddrs(%q) client %s, want %s", tt.client, client, tt.wantClient)
		}
	}
}

// A v2 header carries the peer's name in the PP2TypePeer TLV as
// go-proxyproto reads it; a v1 header has no TLVs but the same addresses.
func TestWriteProxyHeaderNamesPeer(t *testing.T) {
	for _, tt := range []struct {
		version        byte
		client, server string
		proto          proxyproto.AddressFamilyAndProtocol
	}{
		{2, "192.0.2.1:1234", "192.0.2.2:80", proxyproto.TCPv4},
		{2, "[2001:db8::1]:1234", "[2001:db8::2]:443", proxyproto.TCPv6},
		{1, "192.0.2.1:1234", "192.0.2.2:80", proxyproto.TCPv4},
	} {
		a, b := net.Pipe()
		client, server := netip.MustParseAddrPort(tt.client), netip.MustParseAddrPort(tt.server)
		errc := make(chan error, 1)
		go func() { errc <- writeProxyHeader(a, tt.version, client, server, "app1"); _ = a.Close() }()
		h, err := proxyproto.Read(bufio.NewReader(b))
		if werr := <-errc; werr != nil {
			t.Fatalf("v%d: write: %v", tt.version, werr)
		}
		_ = b.Close()
		if err != nil {
			t.Fatalf("v%d: read: %v", tt.version, err)
		}
		if h.Version != tt.version || h.Command != proxyproto.PROXY || h.TransportProtocol != tt.proto {
			t.Errorf("v%d: header version %d command %v protocol %v", tt.version, h.Version, h.Command, h.TransportProtocol)
		}
		if h.SourceAddr.String() != tt.client || h.DestinationAddr.String() != tt.server {
			t.Errorf("v%d: addresses %s -> %s, want %s -> %s", tt.version, h.SourceAddr, h.DestinationAddr, tt.client, tt.server)
		}
		tlvs, err := h.TLVs()
		if err != nil {
			t.Fatalf("v%d: TLVs: %v", tt.version, err)
		}
		var peer []string
		for _, tlv := range tlvs {
			if tlv.Type == PP2TypePeer {
				peer = append(peer, string(tlv.Value))
			}
		}
		want := map[byte]int{1: 0, 2: 1}[tt.version]
		if len(peer) != want || want == 1 && peer[0] != "app1" {
			t.Errorf("v%d: peer TLVs %q, want %d naming app1", tt.version, peer, want)
		}
	}
}

// A stream whose addresses do not parse is refused with StatusBadPreamble,
// the origin is never dialled, and the tunnel carries the next stream.
func TestEngineRefusesUnparsableAddresses(t *testing.T) {
	mem := memtransport.New()
	listenStore, dialStore := pinned.Stores(t, wire.ALPN)
	var logs logtest.Recorder
	var dials int
	origin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 8)
	go func() {
		for {
			c, err := origin.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			// Held open until the stream ends: an origin that closed at
			// once could make the engine reset the stream before the
			// test has read the whole response.
			go func() {
				_, _ = io.Copy(io.Discard, c)
				_ = c.Close()
			}()
		}
	}()
	defer origin.Close()
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: mem, ProxyProtocol: 2,
		Target: []Route{{Name: "o", Addr: origin.Addr().String()}}, TLS: listenStore, Logger: slog.New(&logs),
	})
	s := peerSession(t, mem, listen, dialStore)
	for _, tt := range []struct {
		client, server string
		want           wire.Status
	}{
		{"unknown", "192.0.2.2:80", wire.StatusBadPreamble},
		{"192.0.2.1:1", "not an address", wire.StatusBadPreamble},
		{"192.0.2.1:1", "192.0.2.2:80", wire.StatusOK},
	} {
		resp, err := askStream(t, s, wire.Request{Route: "o", Client: tt.client, Server: tt.server})
		if err != nil || resp.Status != tt.want {
			t.Errorf("client %q server %q: response %+v, %v; want %s", tt.client, tt.server, resp, err, tt.want)
		}
		if tt.want == wire.StatusOK {
			select {
			case <-accepted:
				dials++
			case <-time.After(5 * time.Second):
				t.Error("origin not dialled for the good stream")
			}
		}
	}
	select {
	case <-accepted:
		dials++
	default:
	}
	if dials != 1 {
		t.Errorf("origin dialled %d times, want once (for the good stream only)", dials)
	}
	if !logs.Contains("stream refused", "bad preamble") {
		t.Errorf("no 'stream refused' line with reason bad preamble: %q", logs.All())
	}
}

package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/check"
)

// This file tests PQT_GROUPS and PQT_PQ end to end: each hybrid group on
// each transport, narrower and disjoint lists, bad values, the group on the
// wire, and classical X25519 under PQT_PQ=prefer.

// grpGroups are the hybrid groups with their TLS code points and the size
// of the server's key_share (classical share plus ML-KEM ciphertext).
var grpGroups = []struct {
	name     string
	id       uint16
	shareLen int
}{
	{"X25519MLKEM768", 0x11ec, 32 + 1088},
	{"SecP256r1MLKEM768", 0x11eb, 65 + 1088},
	{"SecP384r1MLKEM1024", 0x11ed, 97 + 1568},
}

// grpPair starts a listen side delivering to target and a dial side with
// one tunnel connection to it, each with its extra environment; it does
// not wait for the tunnel.
func grpPair(t *testing.T, ctx context.Context, transport, target string, lenv, denv map[string]string) (l, d *side) {
	t.Helper()
	le := map[string]string{"PQT_TARGET": target}
	for k, v := range lenv {
		le[k] = v
	}
	de := map[string]string{"PQT_CONNECTIONS": "1"}
	for k, v := range denv {
		de[k] = v
	}
	l = startListen(t, ctx, 0, transport, le)
	d = startDial(t, ctx, l.tunnelAddr, transport, nil, de)
	return l, d
}

// grpRawLine returns the first log line of p matching m as printed.
func grpRawLine(p *proc, m logMatch) string {
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if ls := parseLogs(line); len(ls) == 1 && m.match(ls[0]) {
			return line
		}
	}
	return ""
}

// TestGroupsEach runs both sides with a single hybrid group, on each
// transport: both log it on "tunnel connected", and traffic flows.
func TestGroupsEach(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		for _, g := range grpGroups {
			t.Run(g.name, func(t *testing.T) {
				ctx := testContext(t, 30*time.Second)
				o := startEcho(t)
				env := map[string]string{"PQT_GROUPS": g.name}
				l, d := grpPair(t, ctx, transport, o.addr(), env, env)
				connected := msgIs("tunnel connected", "transport", transport, "group", g.name, "tls", "1.3", "pq_auth", "true")
				wctx := within(t, ctx, 15*time.Second)
				d.waitLog(t, wctx, connected)
				l.waitLog(t, wctx, connected)
				if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(1000, 512<<10)); err != nil {
					t.Fatalf("traffic with %s over %s: %v", g.name, transport, err)
				}
			})
		}
	})
}

// TestGroupsNarrowListenSide runs a listen side that accepts only
// SecP384r1MLKEM1024 against a dial side with the default list: they agree
// on SecP384r1MLKEM1024 (after a HelloRetryRequest) on both transports.
func TestGroupsNarrowListenSide(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 30*time.Second)
		o := startEcho(t)
		l, d := grpPair(t, ctx, transport, o.addr(), map[string]string{"PQT_GROUPS": "SecP384r1MLKEM1024"}, nil)
		connected := msgIs("tunnel connected", "transport", transport, "group", "SecP384r1MLKEM1024")
		wctx := within(t, ctx, 15*time.Second)
		d.waitLog(t, wctx, connected)
		l.waitLog(t, wctx, connected)
		if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(1001, 256<<10)); err != nil {
			t.Fatal(err)
		}
	})
}

// TestGroupsMismatch runs sides whose group lists are disjoint: no tunnel
// comes up, the listen side names both lists, the dial side says it
// failed, and 'pqtunnel check' fails.
func TestGroupsMismatch(t *testing.T) {
	lenv := map[string]string{"PQT_GROUPS": "SecP384r1MLKEM1024"}
	denv := map[string]string{"PQT_GROUPS": "X25519MLKEM768"}
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 30*time.Second)
		o := startEcho(t)
		l, d := grpPair(t, ctx, transport, o.addr(), lenv, denv)
		wctx := within(t, ctx, 15*time.Second)
		refused := msgIs("tunnel handshake refused", "reason", "no_common_group")
		line := l.waitLog(t, wctx, refused)
		if e := line.str("err"); !strings.Contains(e, "X25519MLKEM768") || !strings.Contains(e, "SecP384r1MLKEM1024") {
			t.Errorf("refusal err %q does not name both X25519MLKEM768 and SecP384r1MLKEM1024", e)
		}
		failed := msgIs("tunnel dial failed", "transport", transport)
		d.waitLog(t, wctx, failed)
		t.Logf("listen side: %s", grpRawLine(l.proc, refused))
		t.Logf("dial side: %s", grpRawLine(d.proc, failed))
		if err := expectClosedPromptly(ctx, d.forward[""], time.Second); err != nil {
			t.Errorf("client with no tunnel up: %v", err)
		}
		for _, s := range []*side{l, d} {
			if n := len(s.logs(msgIs("tunnel connected"))); n != 0 {
				t.Errorf("%s logged %d tunnel connections with disjoint groups", s.name, n)
			}
		}
		if n := o.acceptCount(); n != 0 {
			t.Errorf("origin accepted %d connections, want 0", n)
		}
	})

	t.Run("check", func(t *testing.T) {
		ctx := testContext(t, 60*time.Second)
		l := startListen(t, ctx, 0, "auto", map[string]string{"PQT_TARGET": loopback(freePort(t)), "PQT_GROUPS": "SecP384r1MLKEM1024"})
		out, code := chkRun(t, ctx, chkDialEnv(t, l.tunnelAddr, "auto", denv))
		t.Logf("pqtunnel check (exit %d):\n%s", code, out)
		if code == 0 {
			t.Errorf("check exited 0 against a peer with disjoint groups")
		}
		for _, want := range []string{
			"verdict: would NOT connect with PQT_TRANSPORT=auto",
			"advice: quic: the peer accepts none of X25519MLKEM768\n",
			"advice: quic: the peer accepts only SecP384r1MLKEM1024; add it to PQT_GROUPS\n",
			"advice: tcp: the peer accepts only SecP384r1MLKEM1024; add it to PQT_GROUPS\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("check output lacks %q", want)
			}
		}
	})
}

// TestGroupsBadValues starts the binary with bad PQT_GROUPS values: each
// exits non-zero, before listening, naming PQT_GROUPS. A classical group
// after the hybrid ones is fine with PQT_PQ=prefer.
func TestGroupsBadValues(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	self, peer := identityNamed(t, "listen"), identityNamed(t, "dial")
	base := func(groups string) map[string]string {
		env := sideEnv("listen", "tcp", self, peer, map[string]string{"PQT_GROUPS": groups})
		env["PQT_TUNNEL"] = loopback(freePort(t))
		env["PQT_TARGET"] = loopback(freePort(t))
		return env
	}
	cases := []struct {
		name, groups string
		want         []string
	}{
		{"unknown name", "X25519MLKEM768,Kyber768", []string{"Kyber768", "X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024"}},
		{"empty entry", ",X25519MLKEM768", []string{"empty"}},
		{"trailing comma", "X25519MLKEM768,", []string{"empty"}},
		{"X25519 in strict mode", "X25519MLKEM768,X25519", []string{"X25519", "strict"}},
		{"duplicate", "X25519MLKEM768,SecP256r1MLKEM768,x25519mlkem768", []string{"X25519MLKEM768", "twice"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := startProc(t, ctx, "pqtunnel", base(tc.groups), pqtunnelBin)
			if code := p.wait(t, within(t, ctx, 5*time.Second)); code == 0 {
				t.Fatalf("PQT_GROUPS=%q: exit code 0, want non-zero", tc.groups)
			}
			out := p.stderr.String()
			if !strings.Contains(out, "PQT_GROUPS:") {
				t.Errorf("PQT_GROUPS=%q: stderr does not name PQT_GROUPS:\n%s", tc.groups, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("PQT_GROUPS=%q: stderr does not mention %q:\n%s", tc.groups, w, out)
				}
			}
			if strings.Contains(out, "tunnel listening") {
				t.Errorf("started listening despite PQT_GROUPS=%q", tc.groups)
			}
		})
	}
	t.Run("prefer with X25519 last starts", func(t *testing.T) {
		env := base("X25519MLKEM768,X25519")
		env["PQT_PQ"] = "prefer"
		p := startProc(t, ctx, "pqtunnel", env, pqtunnelBin)
		p.waitLog(t, within(t, ctx, 10*time.Second), msgIs("tunnel listening"))
		p.waitLog(t, ctx, msgIs("pqtunnel starting", "pq", "prefer", "groups", "X25519MLKEM768,X25519"))
	})
}

// grpTap is a TCP proxy that records the first bytes the server sends on
// the first connection it relays.
type grpTap struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	first  []byte
	conns  int
	open   map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
}

func grpStartTap(t *testing.T, target string) *grpTap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &grpTap{ln: ln, target: target, open: map[net.Conn]bool{}}
	tp.wg.Add(1)
	go tp.serve()
	t.Cleanup(func() {
		_ = ln.Close() // stops serve
		tp.mu.Lock()
		tp.closed = true
		for c := range tp.open {
			_ = c.Close()
		}
		tp.mu.Unlock()
		tp.wg.Wait()
	})
	return tp
}

func (tp *grpTap) addr() string { return tp.ln.Addr().String() }

func (tp *grpTap) keep(cs ...net.Conn) bool {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.closed {
		for _, c := range cs {
			_ = c.Close()
		}
		return false
	}
	for _, c := range cs {
		tp.open[c] = true
	}
	return true
}

func (tp *grpTap) serve() {
	defer tp.wg.Done()
	for {
		c, err := tp.ln.Accept()
		if err != nil {
			return
		}
		tp.mu.Lock()
		index := tp.conns
		tp.conns++
		tp.mu.Unlock()
		tp.wg.Add(1)
		go func() {
			defer tp.wg.Done()
			u, err := net.Dial("tcp", tp.target)
			if err != nil {
				_ = c.Close()
				return
			}
			if !tp.keep(c, u) {
				return
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = io.Copy(u, c) // client to server, as is
				_ = u.(*net.TCPConn).CloseWrite()
			}()
			buf := make([]byte, 32<<10)
			for {
				n, err := u.Read(buf)
				if index == 0 && n > 0 {
					tp.mu.Lock()
					if len(tp.first) < 64<<10 {
						tp.first = append(tp.first, buf[:n]...)
					}
					tp.mu.Unlock()
				}
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					_ = c.(*net.TCPConn).CloseWrite()
					break
				}
			}
			<-done
			_ = c.Close()
			_ = u.Close()
		}()
	}
}

func (tp *grpTap) firstBytes() []byte {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return append([]byte(nil), tp.first...)
}

// grpHelloRetryRandom is the ServerHello.random of a HelloRetryRequest (RFC 8446, 4.1.3).
var grpHelloRetryRandom = []byte{
	0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
	0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
}

// grpServerHello is what grpParseServerHello reads off the wire.
type grpServerHello struct {
	msg      []byte // the handshake message, header included
	version  uint16 // from supported_versions
	group    uint16 // from key_share
	shareLen int    // length of the key_exchange field
	retry    bool   // a HelloRetryRequest
}

// grpParseServerHello parses the first TLS record of a server's byte
// stream as a TLS 1.3 ServerHello and reads its supported_versions and
// key_share extensions.
func grpParseServerHello(stream []byte) (grpServerHello, error) {
	var sh grpServerHello
	be16 := func(b []byte) int { return int(binary.BigEndian.Uint16(b)) }
	if len(stream) < 5 {
		return sh, errors.New("no TLS record header")
	}
	if stream[0] != 22 {
		return sh, fmt.Errorf("first record has content type %d, want 22 (handshake)", stream[0])
	}
	recLen := be16(stream[3:5])
	if len(stream) < 5+recLen {
		return sh, fmt.Errorf("record of %d bytes, only %d recorded", recLen, len(stream)-5)
	}
	rec := stream[5 : 5+recLen]
	if len(rec) < 4 || rec[0] != 2 {
		return sh, fmt.Errorf("first handshake message has type %d, want 2 (ServerHello)", rec[0])
	}
	msgLen := int(rec[1])<<16 | be16(rec[2:4])
	if len(rec) < 4+msgLen {
		return sh, errors.New("ServerHello split over records")
	}
	sh.msg = rec[:4+msgLen]
	b := rec[4 : 4+msgLen]
	// legacy_version(2) random(32) legacy_session_id_echo(1+n)
	// cipher_suite(2) legacy_compression_method(1) extensions(2+n)
	if len(b) < 35 {
		return sh, errors.New("ServerHello too short")
	}
	sh.retry = bytes.Equal(b[2:34], grpHelloRetryRandom)
	off := 35 + int(b[34])
	if len(b) < off+3+2 {
		return sh, errors.New("ServerHello too short for its extensions")
	}
	off += 3
	extLen := be16(b[off:])
	exts := b[off+2:]
	if len(exts) != extLen {
		return sh, fmt.Errorf("extensions length %d, %d bytes follow", extLen, len(exts))
	}
	seenShare := false
	for len(exts) > 0 {
		if len(exts) < 4 {
			return sh, errors.New("truncated extension header")
		}
		typ, l := be16(exts), be16(exts[2:])
		if len(exts) < 4+l {
			return sh, fmt.Errorf("extension %d truncated", typ)
		}
		data := exts[4 : 4+l]
		switch typ {
		case 43: // supported_versions: the selected version
			if l != 2 {
				return sh, errors.New("bad supported_versions")
			}
			sh.version = uint16(be16(data))
		case 51: // key_share: a KeyShareEntry, or only the group in a HelloRetryRequest
			if l < 2 {
				return sh, errors.New("bad key_share")
			}
			sh.group = uint16(be16(data))
			seenShare = true
			if !sh.retry {
				if l < 4 || be16(data[2:]) != l-4 {
					return sh, errors.New("bad key_share entry")
				}
				sh.shareLen = l - 4
			}
		}
		exts = exts[4+l:]
	}
	if !seenShare {
		return sh, errors.New("ServerHello has no key_share extension")
	}
	return sh, nil
}

// TestGroupsOnTheWire reads the ServerHello off the wire between a dial
// side and a listen side over TCP and checks the key_share group's code
// point: what the tunnel logs is what was actually negotiated.
func TestGroupsOnTheWire(t *testing.T) {
	cases := []struct {
		name   string
		groups string // PQT_GROUPS on both sides; "" the default
		want   int    // index in grpGroups
	}{
		{"default", "", 0},
		{"SecP256r1MLKEM768", "SecP256r1MLKEM768", 1},
		{"SecP384r1MLKEM1024", "SecP384r1MLKEM1024", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 30*time.Second)
			want := grpGroups[tc.want]
			env := map[string]string{}
			if tc.groups != "" {
				env["PQT_GROUPS"] = tc.groups
			}
			le := map[string]string{"PQT_TARGET": loopback(freePort(t))}
			for k, v := range env {
				le[k] = v
			}
			l := startListen(t, ctx, 0, "tcp", le)
			tap := grpStartTap(t, l.tunnelAddr)
			de := map[string]string{"PQT_CONNECTIONS": "1"}
			for k, v := range env {
				de[k] = v
			}
			d := startDial(t, ctx, tap.addr(), "tcp", nil, de)
			d.waitLog(t, within(t, ctx, 15*time.Second), msgIs("tunnel connected", "transport", "tcp", "group", want.name))

			sh, err := grpParseServerHello(tap.firstBytes())
			if err != nil {
				t.Fatalf("parse the listen side's first record: %v", err)
			}
			t.Logf("ServerHello: %d bytes, version %#04x, key_share group %#04x, key_exchange %d bytes, retry %t",
				len(sh.msg), sh.version, sh.group, sh.shareLen, sh.retry)
			if sh.retry {
				t.Errorf("the listen side sent a HelloRetryRequest although both sides prefer %s", want.name)
			}
			if sh.version != tls.VersionTLS13 {
				t.Errorf("supported_versions selects %#04x, want TLS 1.3 (0x0304)", sh.version)
			}
			if sh.group != want.id {
				t.Errorf("key_share group %#04x, want %#04x (%s)", sh.group, want.id, want.name)
			}
			if sh.shareLen != want.shareLen {
				t.Errorf("key_exchange of %d bytes, want %d for %s", sh.shareLen, want.shareLen, want.name)
			}
			// Cross-check with the parser 'pqtunnel check' uses.
			if g, err := check.ServerHelloKeyShare(sh.msg); err != nil || uint16(g) != sh.group {
				t.Errorf("check.ServerHelloKeyShare says %#04x, %v; this test's parser %#04x", uint16(g), err, sh.group)
			}
		})
	}
}

// TestGroupsPreferClassical runs a listen side that offers only classical
// X25519 (PQT_PQ=prefer): a PQT_PQ=prefer dial side connects with X25519
// and both warn; a strict dial side does not connect.
func TestGroupsPreferClassical(t *testing.T) {
	lenv := map[string]string{"PQT_PQ": "prefer", "PQT_GROUPS": "X25519"}
	transports(t, func(t *testing.T, transport string) {
		t.Run("prefer dial side", func(t *testing.T) {
			ctx := testContext(t, 30*time.Second)
			o := startEcho(t)
			l, d := grpPair(t, ctx, transport, o.addr(), lenv, map[string]string{
				"PQT_PQ": "prefer", "PQT_GROUPS": "X25519MLKEM768,SecP256r1MLKEM768,SecP384r1MLKEM1024,X25519",
			})
			warn := msgIs("tunnel connected WITHOUT post-quantum key exchange (PQT_PQ=prefer)", "level", "WARN", "transport", transport, "group", "X25519")
			wctx := within(t, ctx, 15*time.Second)
			d.waitLog(t, wctx, warn)
			l.waitLog(t, wctx, warn)
			t.Logf("dial side: %s", grpRawLine(d.proc, warn))
			for _, s := range []*side{l, d} {
				if n := len(s.logs(msgIs("tunnel connected"))); n != 0 {
					t.Errorf("%s logged a classical connection as a plain \"tunnel connected\"", s.name)
				}
			}
			if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(1002, 256<<10)); err != nil {
				t.Fatal(err)
			}
		})
		t.Run("strict dial side", func(t *testing.T) {
			ctx := testContext(t, 30*time.Second)
			o := startEcho(t)
			l, d := grpPair(t, ctx, transport, o.addr(), lenv, nil)
			wctx := within(t, ctx, 15*time.Second)
			failed := msgIs("tunnel dial failed", "transport", transport)
			d.waitLog(t, wctx, failed)
			refused := msgIs("tunnel handshake refused")
			l.waitLog(t, wctx, refused)
			t.Logf("dial side: %s", grpRawLine(d.proc, failed))
			t.Logf("listen side: %s", grpRawLine(l.proc, refused))
			for _, s := range []*side{l, d} {
				if n := len(s.logs(msgIs("tunnel connected"))) + len(s.logs(msgIs("tunnel connected WITHOUT post-quantum key exchange (PQT_PQ=prefer)"))); n != 0 {
					t.Errorf("%s logged %d tunnel connections between a strict and a classical-only side", s.name, n)
				}
			}
			if n := o.acceptCount(); n != 0 {
				t.Errorf("origin accepted %d connections, want 0", n)
			}
		})
	})
}

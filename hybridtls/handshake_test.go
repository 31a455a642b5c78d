package hybridtls

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/auth/camode"
	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/internal/logtest"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/transport"
)

const testALPN = "pqtunnel-test/1"

// side is one end of a test tunnel: its identity and the Store built on it.
type side struct {
	id    *pinned.Identity
	store *Store
}

func newStore(t testing.TB, p Policy, m auth.Authenticator) *Store {
	t.Helper()
	if p.ALPN == "" {
		p.ALPN = testALPN
	}
	s, err := NewStore(p, m)
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	return s
}

// pinnedSide builds a Store for id that accepts the given peer pins.
func pinnedSide(t testing.TB, mode PQMode, groups []tls.CurveID, id *pinned.Identity, peers ...pinned.Pin) side {
	t.Helper()
	return side{id: id, store: newStore(t, Policy{Mode: mode, Groups: groups, SettingName: testSettingName, Auth: auth.Policy{SettingName: testAuthSettingName}}, &pinned.Authenticator{Identity: id, Peers: peers})}
}

func mustIdentity(t testing.TB) *pinned.Identity {
	t.Helper()
	id, err := pinned.GenerateIdentity()
	if err != nil {
		t.Fatalf("GenerateIdentity: %v", err)
	}
	return id
}

// testSettingName marks the names refusals give settings, so that tests see
// a refusal name the setting through Policy.SettingName.
func testSettingName(s Setting) string { return "<" + s.String() + ">" }

// testAuthSettingName is testSettingName for the authenticators' settings.
func testAuthSettingName(s auth.Setting) string { return "<" + s.String() + ">" }

// pinnedPair returns a client and a server that accept each other.
func pinnedPair(t testing.TB) (client, server side) {
	t.Helper()
	cid, sid := mustIdentity(t), mustIdentity(t)
	return pinnedSide(t, Strict, DefaultGroups, cid, sid.Pin), pinnedSide(t, Strict, DefaultGroups, sid, cid.Pin)
}

// handshake runs a TLS handshake between the two configurations over loopback TCP.
func handshake(t testing.TB, cc, sc *tls.Config) (c, s *tls.Conn, cerr, serr error) {
	t.Helper()
	rc, rs := testutil.TCPPair(t)
	c, s = tls.Client(rc, cc), tls.Server(rs, sc)
	done := make(chan struct{})
	go func() {
		defer close(done)
		serr = s.Handshake()
		if serr != nil {
			_ = rs.Close() // let the client see the failure at once
		}
	}()
	cerr = c.Handshake()
	if cerr != nil {
		_ = rc.Close()
	}
	<-done
	return c, s, cerr, serr
}

type authResult struct {
	peer Peer
	err  error
}

// authenticate runs Store.Authenticate on both ends concurrently.
func authenticate(client, server side, c, s *tls.Conn) (cr, sr authResult) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cs := s.ConnectionState()
		sr.peer, sr.err = server.store.Authenticate(&cs, s, RoleServer)
		if sr.err != nil {
			_ = s.NetConn().Close()
		}
	}()
	cs := c.ConnectionState()
	cr.peer, cr.err = client.store.Authenticate(&cs, c, RoleClient)
	if cr.err != nil {
		_ = c.NetConn().Close()
	}
	wg.Wait()
	return cr, sr
}

// connect runs the handshake and, if it succeeded on both ends, Authenticate.
func connect(t testing.TB, client, server side) (c, s *tls.Conn, cr, sr authResult) {
	t.Helper()
	c, s, cr.err, sr.err = handshake(t, client.store.ClientConfig(), server.store.ServerConfig())
	if cr.err != nil || sr.err != nil {
		return c, s, cr, sr
	}
	cr, sr = authenticate(client, server, c, s)
	return c, s, cr, sr
}

func TestHandshakePinnedSucceeds(t *testing.T) {
	client, server := pinnedPair(t)
	c, s, cr, sr := connect(t, client, server)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("client err %v, server err %v", cr.err, sr.err)
	}
	if !cr.peer.PQAuth || !sr.peer.PQAuth {
		t.Errorf("PQAuth client=%v server=%v, want both true", cr.peer.PQAuth, sr.peer.PQAuth)
	}
	if cr.peer.Name != server.id.Pin.String() {
		t.Errorf("client sees peer %q, want server pin %s", cr.peer.Name, server.id.Pin)
	}
	if sr.peer.Name != client.id.Pin.String() {
		t.Errorf("server sees peer %q, want client pin %s", sr.peer.Name, client.id.Pin)
	}
	for _, conn := range []*tls.Conn{c, s} {
		st := conn.ConnectionState()
		if st.CurveID != tls.X25519MLKEM768 {
			t.Errorf("negotiated %s, want X25519MLKEM768", GroupName(st.CurveID))
		}
		if st.Version != tls.VersionTLS13 {
			t.Errorf("negotiated version %#x, want TLS 1.3", st.Version)
		}
		if st.NegotiatedProtocol != testALPN {
			t.Errorf("ALPN = %q, want %q", st.NegotiatedProtocol, testALPN)
		}
		if st.DidResume {
			t.Error("session resumed")
		}
	}
	// The TLS connection is usable after the proofs.
	go func() { _, _ = c.Write([]byte("ping")) }()
	buf := make([]byte, 4)
	if _, err := s.Read(buf); err != nil || string(buf) != "ping" {
		t.Errorf("read after Authenticate = %q, %v", buf, err)
	}
}

func TestHandshakeServerRefusesUnknownClientPin(t *testing.T) {
	cid, sid, other := mustIdentity(t), mustIdentity(t), mustIdentity(t)
	client := pinnedSide(t, Strict, DefaultGroups, cid, sid.Pin)
	server := pinnedSide(t, Strict, DefaultGroups, sid, other.Pin)
	c, _, cr, sr := connect(t, client, server)
	if !errors.Is(sr.err, auth.ErrPeerNotAllowed) {
		t.Fatalf("server error = %v, want ErrPeerNotAllowed", sr.err)
	}
	if !strings.Contains(sr.err.Error(), cid.Pin.String()) || !strings.Contains(sr.err.Error(), "is not in <Peers>") {
		t.Errorf("server error %q does not name the pin and the Peers setting", sr.err)
	}
	if reason(sr.err) != "peer_not_allowed" {
		t.Errorf("Reason = %q, want peer_not_allowed", reason(sr.err))
	}
	if cr.err == nil {
		// TLS 1.3 lets the client finish first; it must still never get a peer.
		cs := c.ConnectionState()
		_, err := client.store.Authenticate(&cs, c, RoleClient)
		if err == nil {
			t.Fatal("client authenticated a server that refused it")
		}
	}
}

func TestHandshakeClientRefusesUnknownServerPin(t *testing.T) {
	cid, sid, other := mustIdentity(t), mustIdentity(t), mustIdentity(t)
	client := pinnedSide(t, Strict, DefaultGroups, cid, other.Pin)
	server := pinnedSide(t, Strict, DefaultGroups, sid, cid.Pin)
	_, _, cr, sr := connect(t, client, server)
	if !errors.Is(cr.err, auth.ErrPeerNotAllowed) {
		t.Fatalf("client error = %v, want ErrPeerNotAllowed", cr.err)
	}
	if sr.err == nil {
		t.Fatal("server completed although the client refused it")
	}
}

// refusals records what a Store reports through Policy.Logger and Policy.OnRefused.
type refusals struct {
	logs    logtest.Recorder
	mu      sync.Mutex
	reasons []string
}

func (r *refusals) policy(mode PQMode, groups []tls.CurveID) Policy {
	return Policy{Mode: mode, Groups: groups, SettingName: testSettingName, Auth: auth.Policy{SettingName: testAuthSettingName}, Logger: slog.New(&r.logs), OnRefused: func(reason string) {
		r.mu.Lock()
		r.reasons = append(r.reasons, reason)
		r.mu.Unlock()
	}}
}

func (r *refusals) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reasons...)
}

// The server's refusal of a hello without a common group happens inside
// crypto/tls (with the proper alert); the Store says why through its Logger
// and OnRefused, and checkOffered's error wraps the sentinel.
func TestHandshakeStrictServerRefusesClassicalClient(t *testing.T) {
	client, server := pinnedPair(t)
	var rec refusals
	server.store = newStore(t, rec.policy(Strict, DefaultGroups), server.store.Authenticator())
	cc := client.store.ClientConfig()
	cc.CurvePreferences = []tls.CurveID{tls.X25519}
	_, _, cerr, serr := handshake(t, cc, server.store.ServerConfig())
	if cerr == nil {
		t.Fatal("client handshake succeeded against a strict server with X25519 only")
	}
	if serr == nil {
		t.Fatal("strict server completed a handshake with an X25519-only client")
	}
	if got := rec.got(); len(got) != 1 || got[0] != "not_post_quantum" {
		t.Errorf("OnRefused reasons = %v, want [not_post_quantum]", got)
	}
	if !rec.logs.Contains("tunnel handshake refused", "reason=not_post_quantum", "X25519", "<Mode>=strict") {
		t.Errorf("server did not log the refusal with its reason and the groups; logs: %v", rec.logs.All())
	}
	// The server's crypto/tls error says nothing typed; the transport adds
	// the alert it sent (transport/tlsmux TestServerGroupRefusalIsClassified),
	// which makes it no_common_group, a refusal the Store logged already.
	if !LoggedRefusal(string(transport.ReasonNoCommonGroup)) {
		t.Error("LoggedRefusal(no_common_group) = false: the refusal would be logged twice")
	}
	if r := reason(cerr); r != "no_common_group" {
		t.Errorf("client Reason(%v) = %q, want no_common_group", cerr, r)
	}
}

func TestCheckOffered(t *testing.T) {
	strict := newStore(t, Policy{Mode: Strict, Groups: []tls.CurveID{tls.SecP384r1MLKEM1024}}, pinnedPairMaterial(t))
	prefer := newStore(t, Policy{Mode: Prefer, Groups: []tls.CurveID{tls.SecP384r1MLKEM1024}}, pinnedPairMaterial(t))
	tests := []struct {
		name    string
		s       *Store
		offered []tls.CurveID
		want    error // nil, ErrNotPostQuantum or ErrNoCommonGroup
	}{
		{"common hybrid", strict, []tls.CurveID{tls.X25519MLKEM768, tls.SecP384r1MLKEM1024}, nil},
		{"classical only, strict", strict, []tls.CurveID{tls.X25519, tls.CurveP256}, ErrNotPostQuantum},
		{"nothing offered", strict, nil, ErrNotPostQuantum},
		{"other hybrid", strict, []tls.CurveID{tls.X25519MLKEM768, tls.X25519}, ErrNoCommonGroup},
		{"classical X25519, prefer", prefer, []tls.CurveID{tls.X25519}, nil},
		{"classical P-256, prefer", prefer, []tls.CurveID{tls.CurveP256}, ErrNotPostQuantum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.checkOffered(&tls.ClientHelloInfo{SupportedCurves: tt.offered})
			if tt.want == nil {
				if err != nil {
					t.Fatalf("checkOffered = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("checkOffered = %v, want %v", err, tt.want)
			}
			if errors.Is(err, ErrNotPostQuantum) && errors.Is(err, ErrNoCommonGroup) {
				t.Errorf("checkOffered = %v wraps both sentinels", err)
			}
			if !strings.Contains(err.Error(), "SecP384r1MLKEM1024") {
				t.Errorf("error %q does not name the accepted groups", err)
			}
			if !LoggedRefusal(reasonOf(err)) {
				t.Errorf("LoggedRefusal(reasonOf(%v)) = false", err)
			}
		})
	}
}

func pinnedPairMaterial(t testing.TB) *pinned.Authenticator {
	id := mustIdentity(t)
	return &pinned.Authenticator{Identity: id, Peers: []pinned.Pin{id.Pin}}
}

func TestHandshakePreferServerAcceptsClassicalClient(t *testing.T) {
	cid, sid := mustIdentity(t), mustIdentity(t)
	client := pinnedSide(t, Prefer, []tls.CurveID{tls.X25519}, cid, sid.Pin)
	server := pinnedSide(t, Prefer, DefaultGroups, sid, cid.Pin)
	c, _, cr, sr := connect(t, client, server)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("client err %v, server err %v", cr.err, sr.err)
	}
	if g := c.ConnectionState().CurveID; g != tls.X25519 {
		t.Errorf("negotiated %s, want X25519", GroupName(g))
	}
	if !cr.peer.PQAuth || !sr.peer.PQAuth {
		t.Error("ML-DSA authentication must still hold with a classical key exchange")
	}
}

func TestHandshakeStrictClientRefusesClassicalServer(t *testing.T) {
	// A prefer server that would pick X25519 cannot, because a strict
	// client never offers it; both sides agree on a hybrid.
	cid, sid := mustIdentity(t), mustIdentity(t)
	client := pinnedSide(t, Strict, DefaultGroups, cid, sid.Pin)
	server := pinnedSide(t, Prefer, DefaultGroups, sid, cid.Pin)
	c, _, cr, sr := connect(t, client, server)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("client err %v, server err %v", cr.err, sr.err)
	}
	if g := c.ConnectionState().CurveID; !IsHybrid(g) {
		t.Errorf("negotiated %s, want a hybrid", GroupName(g))
	}
}

func TestHandshakeGroupSelection(t *testing.T) {
	cid, sid := mustIdentity(t), mustIdentity(t)
	t.Run("P384 hybrid only server", func(t *testing.T) {
		client := pinnedSide(t, Strict, DefaultGroups, cid, sid.Pin)
		server := pinnedSide(t, Strict, []tls.CurveID{tls.SecP384r1MLKEM1024}, sid, cid.Pin)
		c, s, cr, sr := connect(t, client, server)
		if cr.err != nil || sr.err != nil {
			t.Fatalf("client err %v, server err %v", cr.err, sr.err)
		}
		for _, conn := range []*tls.Conn{c, s} {
			if g := conn.ConnectionState().CurveID; g != tls.SecP384r1MLKEM1024 {
				t.Errorf("negotiated %s, want SecP384r1MLKEM1024", GroupName(g))
			}
		}
	})
	t.Run("P256 hybrid preferred by client", func(t *testing.T) {
		client := pinnedSide(t, Strict, []tls.CurveID{tls.SecP256r1MLKEM768}, cid, sid.Pin)
		server := pinnedSide(t, Strict, DefaultGroups, sid, cid.Pin)
		c, _, cr, sr := connect(t, client, server)
		if cr.err != nil || sr.err != nil {
			t.Fatalf("client err %v, server err %v", cr.err, sr.err)
		}
		if g := c.ConnectionState().CurveID; g != tls.SecP256r1MLKEM768 {
			t.Errorf("negotiated %s, want SecP256r1MLKEM768", GroupName(g))
		}
	})
	t.Run("disjoint hybrid lists", func(t *testing.T) {
		var rec refusals
		client := pinnedSide(t, Strict, []tls.CurveID{tls.X25519MLKEM768}, cid, sid.Pin)
		server := side{id: sid, store: newStore(t, rec.policy(Strict, []tls.CurveID{tls.SecP384r1MLKEM1024}), &pinned.Authenticator{Identity: sid, Peers: []pinned.Pin{cid.Pin}})}
		_, _, cr, sr := connect(t, client, server)
		if cr.err == nil {
			t.Error("client handshake succeeded without a common group")
		}
		if sr.err == nil {
			t.Fatal("server handshake succeeded without a common group")
		}
		if got := rec.got(); len(got) != 1 || got[0] != "no_common_group" {
			t.Errorf("OnRefused reasons = %v, want [no_common_group]", got)
		}
		if !rec.logs.Contains("tunnel handshake refused", "reason=no_common_group", "X25519MLKEM768", "SecP384r1MLKEM1024", "<Groups> accepts") {
			t.Errorf("server did not log both group lists; logs: %v", rec.logs.All())
		}
		// The server's side is classified by its transport, from the alert
		// it sent (transport/tlsmux TestServerGroupRefusalIsClassified).
		if reason(cr.err) != "no_common_group" {
			t.Errorf("Reason client = %q, want no_common_group", reason(cr.err))
		}
	})
}

// connectTLS returns a pinned pair whose TLS handshake succeeded, before any proof.
func connectTLS(t testing.TB) (client, server side, c, s *tls.Conn) {
	t.Helper()
	client, server = pinnedPair(t)
	c, s, cerr, serr := handshake(t, client.store.ClientConfig(), server.store.ServerConfig())
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	return client, server, c, s
}

// authenticateAsync runs side's Authenticate on conn in a goroutine, closes
// the connection when it returns, and delivers its error.
func authenticateAsync(sd side, conn *tls.Conn, role Role) <-chan error {
	errc := make(chan error, 1)
	go func() {
		cs := conn.ConnectionState()
		_, err := sd.store.Authenticate(&cs, conn, role)
		_ = conn.NetConn().Close()
		errc <- err
	}()
	return errc
}

// serverVerifies runs the server's Authenticate while the client side reads
// the server's proof and sends msg as its own, then returns the server's result.
func serverVerifies(t *testing.T, server side, c, s *tls.Conn, msg []byte, closeWrite bool) error {
	t.Helper()
	errc := authenticateAsync(server, s, RoleServer)
	if _, err := ReadProof(c); err != nil {
		t.Fatalf("client did not receive the server's proof: %v", err)
	}
	// The server may refuse and close after the first bytes, failing the
	// rest of this write: its verdict is what the test checks.
	if _, err := c.Write(msg); err == nil && closeWrite {
		_ = c.CloseWrite()
	}
	return <-errc
}

func TestAuthenticateRejectsBadProofs(t *testing.T) {
	otherKey := mustIdentity(t).Ed25519
	tests := []struct {
		name string
		// proof builds the message the client sends on session c.
		proof func(t *testing.T, client, server side, c *tls.Conn) []byte
		// closeWrite ends the client's stream after the message.
		closeWrite bool
	}{
		{name: "garbage", proof: func(*testing.T, side, side, *tls.Conn) []byte {
			return bytes.Repeat([]byte("garbage!"), 500)
		}},
		{name: "wrong magic", proof: func(t *testing.T, client, _ side, c *tls.Conn) []byte {
			cs := c.ConnectionState()
			msg := mustProof(t, &cs, client.id.Ed25519, RoleClient)
			msg[0] = 'X'
			return msg
		}},
		{name: "wrong version", proof: func(t *testing.T, client, _ side, c *tls.Conn) []byte {
			cs := c.ConnectionState()
			msg := mustProof(t, &cs, client.id.Ed25519, RoleClient)
			msg[4] = 1
			return msg
		}},
		{name: "wrong signature length", proof: func(t *testing.T, client, _ side, c *tls.Conn) []byte {
			cs := c.ConnectionState()
			msg := mustProof(t, &cs, client.id.Ed25519, RoleClient)
			msg[6]--
			return msg[:len(msg)-1]
		}},
		{name: "zero-length signature", proof: func(t *testing.T, _, _ side, c *tls.Conn) []byte {
			cs := c.ConnectionState()
			return mustProof(t, &cs, nil, RoleClient)
		}},
		{name: "header only then EOF", closeWrite: true, proof: func(t *testing.T, client, _ side, c *tls.Conn) []byte {
			cs := c.ConnectionState()
			return mustProof(t, &cs, client.id.Ed25519, RoleClient)[:proofHeader]
		}},
		{name: "truncated signature then EOF", closeWrite: true, proof: func(t *testing.T, client, _ side, c *tls.Conn) []byte {
			cs := c.ConnectionState()
			msg := mustProof(t, &cs, client.id.Ed25519, RoleClient)
			return msg[:len(msg)-1]
		}},
		{name: "flipped signature bit", proof: func(t *testing.T, client, _ side, c *tls.Conn) []byte {
			cs := c.ConnectionState()
			msg := mustProof(t, &cs, client.id.Ed25519, RoleClient)
			msg[proofHeader+10] ^= 1
			return msg
		}},
		{name: "signed by another Ed25519 key", proof: func(t *testing.T, _, _ side, c *tls.Conn) []byte {
			cs := c.ConnectionState()
			return mustProof(t, &cs, otherKey, RoleClient)
		}},
		{name: "signed over another session's EKM", proof: func(t *testing.T, client, server side, _ *tls.Conn) []byte {
			// A second, valid session between the same two identities.
			c2, _, cerr, serr := handshake(t, client.store.ClientConfig(), server.store.ServerConfig())
			if cerr != nil || serr != nil {
				t.Fatalf("second handshake: %v, %v", cerr, serr)
			}
			cs2 := c2.ConnectionState()
			return mustProof(t, &cs2, client.id.Ed25519, RoleClient)
		}},
		{name: "client signs with the server role", proof: func(t *testing.T, client, _ side, c *tls.Conn) []byte {
			cs := c.ConnectionState()
			return mustProof(t, &cs, client.id.Ed25519, RoleServer)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server, c, s := connectTLS(t)
			err := serverVerifies(t, server, c, s, tt.proof(t, client, server, c), tt.closeWrite)
			if !errors.Is(err, ErrProof) {
				t.Fatalf("server Authenticate = %v, want ErrProof", err)
			}
			if reason(err) != "proof_failed" {
				t.Errorf("Reason = %q, want proof_failed", reason(err))
			}
		})
	}
}

func TestAuthenticateRejectsReflectedServerProof(t *testing.T) {
	// The client echoes the server's own proof back: it is signed with the
	// server's key and the server role, so it must not verify as the client.
	_, server, c, s := connectTLS(t)
	errc := authenticateAsync(server, s, RoleServer)
	sig, err := ReadProof(c)
	if err != nil {
		t.Fatal(err)
	}
	msg := append([]byte(proofMagic), proofVersion, byte(len(sig)>>8), byte(len(sig)))
	if _, err := c.Write(append(msg, sig...)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrProof) {
		t.Fatalf("server Authenticate = %v, want ErrProof", err)
	}
}

func TestAuthenticateClientRejectsServerProofWithClientRole(t *testing.T) {
	client, server, c, s := connectTLS(t)
	errc := authenticateAsync(client, c, RoleClient)
	cs := s.ConnectionState()
	if _, err := s.Write(mustProof(t, &cs, server.id.Ed25519, RoleClient)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrProof) {
		t.Fatalf("client Authenticate = %v, want ErrProof", err)
	}
}

func TestVerifyProofDirect(t *testing.T) {
	client, _, c, s := connectTLS(t)
	ccs, scs := c.ConnectionState(), s.ConnectionState()
	msg := mustProof(t, &ccs, client.id.Ed25519, RoleClient)
	sig, err := ReadProof(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if len(sig) != ed25519.SignatureSize {
		t.Fatalf("signature is %d bytes, want %d", len(sig), ed25519.SignatureSize)
	}
	if err := VerifyProof(&scs, sig, RoleClient, true); err != nil {
		t.Fatalf("VerifyProof(valid) = %v", err)
	}
	if err := VerifyProof(&scs, sig, RoleServer, true); !errors.Is(err, ErrProof) {
		t.Errorf("VerifyProof with the wrong role = %v, want ErrProof", err)
	}
	if err := VerifyProof(&scs, sig, RoleClient, false); !errors.Is(err, ErrProof) {
		t.Errorf("VerifyProof of a signature from a CA-mode peer = %v, want ErrProof", err)
	}
	noCert := scs
	noCert.PeerCertificates = nil
	if err := VerifyProof(&noCert, sig, RoleClient, true); !errors.Is(err, ErrProof) {
		t.Errorf("VerifyProof without a peer certificate = %v, want ErrProof", err)
	}
}

func mustProof(t testing.TB, cs *tls.ConnectionState, key ed25519.PrivateKey, role Role) []byte {
	t.Helper()
	msg, err := AppendProof(nil, cs, key, role)
	if err != nil {
		t.Fatalf("AppendProof: %v", err)
	}
	return msg
}

func TestAuthenticateRefusesTLS12(t *testing.T) {
	client, _ := pinnedPair(t)
	cs := tls.ConnectionState{Version: tls.VersionTLS12, CurveID: tls.X25519MLKEM768}
	var rw bytes.Buffer
	if _, err := client.store.Authenticate(&cs, &rw, RoleClient); err == nil || !strings.Contains(err.Error(), "TLS 1.3") {
		t.Fatalf("Authenticate(TLS 1.2) = %v, want a TLS 1.3 error", err)
	}
	if rw.Len() != 0 {
		t.Error("Authenticate sent a proof over a TLS 1.2 session")
	}
	cs = tls.ConnectionState{Version: tls.VersionTLS13, CurveID: tls.X25519}
	if _, err := client.store.Authenticate(&cs, &rw, RoleClient); !errors.Is(err, ErrNotPostQuantum) {
		t.Fatalf("Authenticate(X25519, strict) = %v, want ErrNotPostQuantum", err)
	}
	if rw.Len() != 0 {
		t.Error("Authenticate sent a proof over a classical session in strict mode")
	}
}

func TestHandshakeNoResumption(t *testing.T) {
	client, server := pinnedPair(t)
	for _, c := range []*tls.Config{client.store.ClientConfig(), server.store.ServerConfig()} {
		if c.MinVersion != tls.VersionTLS13 {
			t.Errorf("MinVersion = %#x, want TLS 1.3", c.MinVersion)
		}
	}
	if !client.store.ClientConfig().SessionTicketsDisabled {
		t.Error("client config allows session resumption")
	}
	// The server's effective config comes from GetConfigForClient.
	sc, err := server.store.ServerConfig().GetConfigForClient(&tls.ClientHelloInfo{SupportedCurves: DefaultGroups})
	if err != nil {
		t.Fatal(err)
	}
	if !sc.SessionTicketsDisabled || sc.ClientAuth != tls.RequireAnyClientCert || sc.VerifyConnection == nil {
		t.Errorf("server config: tickets disabled %v, client auth %v, VerifyConnection set %v", sc.SessionTicketsDisabled, sc.ClientAuth, sc.VerifyConnection != nil)
	}
}

func TestStoreSwapKeepsOldMaterialOnError(t *testing.T) {
	client, _ := pinnedPair(t)
	old := client.store.Authenticator().(*pinned.Authenticator)
	cert := old.Identity.Certificate
	if err := client.store.Swap(&camode.Authenticator{Certificate: &cert}); err == nil {
		t.Fatal("Swap accepted a CA certificate without its CA")
	}
	if client.store.Authenticator() != old {
		t.Fatal("a failed Swap replaced the material")
	}
	next := &pinned.Authenticator{Identity: mustIdentity(t), Peers: old.Peers}
	if err := client.store.Swap(next); err != nil {
		t.Fatal(err)
	}
	if client.store.Authenticator() != next {
		t.Fatal("Swap did not install the new material")
	}
}

func TestServerConfigReadsMaterialPerHandshake(t *testing.T) {
	client, server := pinnedPair(t)
	oldCfg := server.store.ServerConfig()
	// The server stops accepting the client's pin.
	if err := server.store.Swap(&pinned.Authenticator{Identity: server.id, Peers: []pinned.Pin{mustIdentity(t).Pin}}); err != nil {
		t.Fatal(err)
	}
	_, _, _, serr := handshake(t, client.store.ClientConfig(), oldCfg)
	if !errors.Is(serr, auth.ErrPeerNotAllowed) {
		t.Fatalf("after Swap, a server config obtained before it still accepted the old pin: %v", serr)
	}
}

// TestNamedPeersAndRecheck checks that a configured name, not the pin, names
// the peer, and that Recheck follows the material in force: a renamed peer
// gets its new name, a removed pin and an empty list refuse it.
func TestNamedPeersAndRecheck(t *testing.T) {
	client, server := pinnedPair(t)
	m := server.store.Authenticator().(*pinned.Authenticator)
	named := &pinned.Authenticator{Identity: server.id, Peers: m.Peers, Names: map[pinned.Pin]string{m.Peers[0]: "app1"}}
	if err := server.store.Swap(named); err != nil {
		t.Fatal(err)
	}
	_, s, cr, sr := connect(t, client, server)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("client err %v, server err %v", cr.err, sr.err)
	}
	if sr.peer.Name != "app1" {
		t.Errorf("server names its peer %q, want app1", sr.peer.Name)
	}
	cs := s.ConnectionState()
	if name, err := server.store.Recheck(&cs, RoleServer); err != nil || name != "app1" {
		t.Errorf("Recheck = %q, %v; want app1", name, err)
	}
	renamed := &pinned.Authenticator{Identity: server.id, Peers: m.Peers, Names: map[pinned.Pin]string{m.Peers[0]: "app2"}}
	if err := server.store.Swap(renamed); err != nil {
		t.Fatal(err)
	}
	if name, err := server.store.Recheck(&cs, RoleServer); err != nil || name != "app2" {
		t.Errorf("Recheck after a rename = %q, %v; want app2", name, err)
	}
	if err := server.store.Swap(&pinned.Authenticator{Identity: server.id}); err != nil {
		t.Fatalf("an empty pin list is valid (it accepts nobody): %v", err)
	}
	if _, err := server.store.Recheck(&cs, RoleServer); !errors.Is(err, auth.ErrPeerNotAllowed) {
		t.Errorf("Recheck with no pins = %v, want ErrPeerNotAllowed", err)
	}
	if _, _, _, serr := handshake(t, client.store.ClientConfig(), server.store.ServerConfig()); !errors.Is(serr, auth.ErrPeerNotAllowed) {
		t.Errorf("handshake with no pins: %v, want ErrPeerNotAllowed", serr)
	}
}

func TestNewStoreAndValidate(t *testing.T) {
	id := mustIdentity(t)
	cert := id.Certificate
	tests := []struct {
		name string
		p    Policy
		m    auth.Authenticator
		want string
	}{
		{"no groups", Policy{Mode: Strict}, &pinned.Authenticator{Identity: id, Peers: []pinned.Pin{id.Pin}}, "no key-exchange groups"},
		{"nothing", Policy{Mode: Strict, Groups: DefaultGroups}, &pinned.Authenticator{}, "no identity"},
		{"none", Policy{Mode: Strict, Groups: DefaultGroups}, nil, "no identity"},
		{"cert without CA", Policy{Mode: Strict, Groups: DefaultGroups}, &camode.Authenticator{Certificate: &cert}, "needs the CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewStore(tt.p, tt.m)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewStore = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestReason(t *testing.T) {
	timeout := &net.OpError{Op: "read", Err: context.DeadlineExceeded}
	tests := []struct {
		err  error
		want string
	}{
		{ErrNotPostQuantum, "not_post_quantum"},
		{ErrNoCommonGroup, "no_common_group"},
		{auth.ErrPeerNotAllowed, "peer_not_allowed"},
		{ErrProof, "proof_failed"},
		{timeout, "timeout"},
		{fmt.Errorf("read: %w", transport.PeerAlert(40)), "no_common_group"},
		{errors.New("something else"), "tls"},
	}
	for _, tt := range tests {
		if got := reason(tt.err); got != tt.want {
			t.Errorf("Classify(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
	if LoggedRefusal(reason(ErrProof)) || !LoggedRefusal(reason(ErrNoCommonGroup)) {
		t.Error("LoggedRefusal misclassifies")
	}
}

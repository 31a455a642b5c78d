package hybridtls

import (
	"bytes"
	"crypto/mldsa"
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/tlswire"
)

// impostor returns an identity presenting victim's certificate (and so its
// pin) whose keys are victim's only where keep says so.
func impostor(t *testing.T, victim *pinned.Identity, keepMLDSA, keepEd25519 bool) *pinned.Identity {
	t.Helper()
	other := mustIdentity(t)
	imp := *victim
	if !keepMLDSA {
		imp.MLDSA = other.MLDSA
	}
	if !keepEd25519 {
		imp.Ed25519 = other.Ed25519
	}
	imp.Certificate = victim.Certificate
	imp.Certificate.PrivateKey = imp.MLDSA
	return &imp
}

func TestHandshakeFailsForPeerWithoutTheMLDSAKey(t *testing.T) {
	cid, sid := mustIdentity(t), mustIdentity(t)
	t.Run("client", func(t *testing.T) {
		client := pinnedSide(t, Strict, DefaultGroups, impostor(t, cid, false, true), sid.Pin)
		server := pinnedSide(t, Strict, DefaultGroups, sid, cid.Pin)
		_, _, cerr, serr := handshake(t, client.store.ClientConfig(), server.store.ServerConfig())
		if serr == nil {
			t.Fatal("server completed the TLS handshake with a client that lacks the pinned ML-DSA-65 key")
		}
		if !strings.Contains(serr.Error(), "ML-DSA verification failure") {
			t.Errorf("server handshake error = %v, want the CertificateVerify to fail", serr)
		}
		_ = cerr // TLS 1.3 lets the client finish before the server checks it
	})
	t.Run("server", func(t *testing.T) {
		client := pinnedSide(t, Strict, DefaultGroups, cid, sid.Pin)
		server := pinnedSide(t, Strict, DefaultGroups, impostor(t, sid, false, true), cid.Pin)
		_, _, cerr, serr := handshake(t, client.store.ClientConfig(), server.store.ServerConfig())
		if cerr == nil || serr == nil {
			t.Fatalf("handshake with a server that lacks the pinned ML-DSA-65 key: client %v, server %v", cerr, serr)
		}
		if !strings.Contains(cerr.Error(), "ML-DSA verification failure") {
			t.Errorf("client handshake error = %v, want the CertificateVerify to fail", cerr)
		}
	})
}

func TestAuthenticateRefusesPeerWithoutTheEd25519Key(t *testing.T) {
	cid, sid := mustIdentity(t), mustIdentity(t)
	t.Run("client", func(t *testing.T) {
		client := pinnedSide(t, Strict, DefaultGroups, impostor(t, cid, true, false), sid.Pin)
		server := pinnedSide(t, Strict, DefaultGroups, sid, cid.Pin)
		_, _, cr, sr := connect(t, client, server)
		if !errors.Is(sr.err, ErrProof) {
			t.Fatalf("server Authenticate = %v (client %v), want ErrProof", sr.err, cr.err)
		}
	})
	t.Run("server", func(t *testing.T) {
		client := pinnedSide(t, Strict, DefaultGroups, cid, sid.Pin)
		server := pinnedSide(t, Strict, DefaultGroups, impostor(t, sid, true, false), cid.Pin)
		_, _, cr, sr := connect(t, client, server)
		if !errors.Is(cr.err, ErrProof) {
			t.Fatalf("client Authenticate = %v (server %v), want ErrProof", cr.err, sr.err)
		}
	})
}

func TestHandshakeCertificateVerifyIsMLDSA65OnTheWire(t *testing.T) {
	client, server := pinnedPair(t)
	var keys bytes.Buffer
	cc := client.store.ClientConfig()
	cc.KeyLogWriter = &keys
	rc, rs := testutil.TCPPair(t)
	tap := &tapConn{Conn: rc}
	c, s := tls.Client(tap, cc), tls.Server(rs, server.store.ServerConfig())
	var wg sync.WaitGroup
	var cr, sr authResult
	wg.Add(1)
	go func() {
		defer wg.Done()
		if sr.err = s.Handshake(); sr.err == nil {
			cs := s.ConnectionState()
			sr.peer, sr.err = server.store.Authenticate(&cs, s, RoleServer)
		}
	}()
	if cr.err = c.Handshake(); cr.err == nil {
		cs := c.ConnectionState()
		cr.peer, cr.err = client.store.Authenticate(&cs, c, RoleClient)
	}
	wg.Wait()
	if cr.err != nil || sr.err != nil {
		t.Fatalf("client %v, server %v", cr.err, sr.err)
	}
	if cr.peer.Sig != tls.MLDSA65 || sr.peer.Sig != tls.MLDSA65 || !cr.peer.PQAuth || !sr.peer.PQAuth {
		t.Errorf("peers = %+v / %+v, want Sig MLDSA65 and PQAuth", cr.peer, sr.peer)
	}
	sent, received := tap.captured()
	schemes, err := tlswire.CertificateVerifySchemes(keys.String(), sent, received)
	if errors.Is(err, tlswire.ErrUnsupportedSuite) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	for side, s := range schemes {
		if s.Scheme != tls.MLDSA65 || s.SignatureLen != mldsa.MLDSA65SignatureSize {
			t.Errorf("%s CertificateVerify = %v with %d signature bytes, want MLDSA65 (0x0905) with %d", side, s.Scheme, s.SignatureLen, mldsa.MLDSA65SignatureSize)
		}
	}
	if len(schemes) != 2 {
		t.Errorf("found CertificateVerify from %d sides, want both", len(schemes))
	}
}

func TestHandshakePureMLKEM1024(t *testing.T) {
	cid, sid := mustIdentity(t), mustIdentity(t)
	only := []tls.CurveID{tls.MLKEM1024}
	client := pinnedSide(t, Strict, only, cid, sid.Pin)
	server := pinnedSide(t, Strict, append([]tls.CurveID{tls.X25519MLKEM768}, only...), sid, cid.Pin)
	c, _, cr, sr := connect(t, client, server)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("client %v, server %v", cr.err, sr.err)
	}
	if g := c.ConnectionState().CurveID; g != tls.MLKEM1024 {
		t.Errorf("negotiated %s, want MLKEM1024", GroupName(g))
	}
}

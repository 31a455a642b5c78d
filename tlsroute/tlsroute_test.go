package tlsroute

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pqtunnel/pqtunnel/auth/camode"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
	"github.com/pqtunnel/pqtunnel/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newStore(t *testing.T, mode hybridtls.PQMode, m *Material) *Store {
	t.Helper()
	s, err := NewStore(hybridtls.Policy{Mode: mode, Groups: hybridtls.DefaultGroups}, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// result is one side's outcome of a handshake over a pipe.
type result struct {
	info Info
	err  error
}

// handshake runs t's server handshake against a crypto/tls client with cc
// over loopback TCP and returns both outcomes.
func handshake(t *testing.T, term *Terminator, cc *tls.Config) (server result, client tls.ConnectionState, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tc, info, err := term.Handshake(ctx, c)
		if err == nil {
			// Let the client read the ticket, then end.
			_, _ = tc.Write([]byte("x"))
			_ = tc.Close()
		}
		done <- result{info: info, err: err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, cc)
	clientErr = tc.Handshake()
	if clientErr == nil {
		buf := make([]byte, 1)
		_, clientErr = tc.Read(buf)
		client = tc.ConnectionState()
	}
	return <-done, client, clientErr
}

func clientConfig(ca *testca.CA, name string) *tls.Config {
	return &tls.Config{RootCAs: ca.Pool, ServerName: name, MinVersion: tls.VersionTLS13}
}

func TestTerminatorCertificateChoice(t *testing.T) {
	ca := testca.New(t, "test CA")
	ecA := ca.Issue(t, testca.Leaf{DNS: []string{"a.example"}}).Certificate
	pqA := ca.Issue(t, testca.Leaf{DNS: []string{"a.example"}, Key: testca.MLDSA65}).Certificate
	ecB := ca.Issue(t, testca.Leaf{DNS: []string{"b.example", "*.b.example"}}).Certificate
	// The ML-DSA certificate is listed last; it is still preferred for
	// clients that can verify it.
	s := newStore(t, hybridtls.Strict, &Material{Certificates: []tls.Certificate{ecA, ecB, pqA}})
	term := NewTerminator(s, nil)

	t.Run("crypto/tls client gets ML-DSA", func(t *testing.T) {
		srv, cs, err := handshake(t, term, clientConfig(ca, "a.example"))
		if err != nil || srv.err != nil {
			t.Fatalf("handshake: client %v, server %v", err, srv.err)
		}
		if srv.info.Sig != "ML-DSA-65" || cs.PeerCertificates[0].Raw == nil || !isMLDSA(cs.PeerCertificates[0]) {
			t.Errorf("sig %q, want ML-DSA-65 for a client that offers it", srv.info.Sig)
		}
		if srv.info.Group != tls.X25519MLKEM768 || srv.info.SNI != "a.example" {
			t.Errorf("info %+v, want X25519MLKEM768 and SNI a.example", srv.info)
		}
	})
	t.Run("SNI picks the other name", func(t *testing.T) {
		srv, cs, err := handshake(t, term, clientConfig(ca, "www.b.example"))
		if err != nil || srv.err != nil {
			t.Fatalf("handshake: client %v, server %v", err, srv.err)
		}
		if got := cs.PeerCertificates[0].DNSNames[0]; got != "b.example" || srv.info.Sig != "ECDSA-P256-SHA256" {
			t.Errorf("served %s (%s), want b.example with ECDSA", got, srv.info.Sig)
		}
		if l := s.SNILabel("www.b.example"); l != "*.b.example" {
			t.Errorf("SNILabel = %q, want the wildcard name it matched", l)
		}
		if l := s.SNILabel("evil.example"); l != "other" {
			t.Errorf("SNILabel of an unknown name = %q, want other", l)
		}
	})

	hello := func(sni string, schemes ...tls.SignatureScheme) *tls.ClientHelloInfo {
		return &tls.ClientHelloInfo{ServerName: sni, SignatureSchemes: schemes, SupportedVersions: []uint16{tls.VersionTLS13}}
	}
	m := s.Material()
	for _, tt := range []struct {
		name  string
		hello *tls.ClientHelloInfo
		want  *tls.Certificate
	}{
		{"browser without ML-DSA", hello("a.example", tls.ECDSAWithP256AndSHA256, tls.PSSWithSHA256), &ecA},
		{"ML-DSA offered", hello("a.example", tls.MLDSA65, tls.ECDSAWithP256AndSHA256), &pqA},
		{"no SNI", hello("", tls.ECDSAWithP256AndSHA256), &ecA},
		{"unknown SNI gets a key it can verify", hello("c.example", tls.ECDSAWithP256AndSHA256), &ecA},
		{"wildcard", hello("x.b.example", tls.MLDSA65, tls.ECDSAWithP256AndSHA256), &ecB},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := choose(m.Certificates, tt.hello)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Certificate[0], tt.want.Certificate[0]) {
				t.Errorf("chose %s %s, want %s %s", got.Leaf.DNSNames, sigName(got.Leaf), tt.want.Leaf.DNSNames, sigName(tt.want.Leaf))
			}
		})
	}
}

func TestTerminatorGroupPolicy(t *testing.T) {
	ca := testca.New(t, "test CA")
	m := &Material{Certificates: []tls.Certificate{ca.Issue(t, testca.Leaf{DNS: []string{"a.example"}}).Certificate}}
	classical := clientConfig(ca, "a.example")
	classical.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}

	srv, _, err := handshake(t, NewTerminator(newStore(t, hybridtls.Strict, m), nil), classical)
	if err == nil {
		t.Fatal("strict: a classical-only client completed the handshake")
	}
	var he *HandshakeError
	if !errors.As(srv.err, &he) || he.Reason != ReasonNotPostQuantum {
		t.Fatalf("strict: server error %v, want reason %s", srv.err, ReasonNotPostQuantum)
	}
	if !slices.Equal(he.Offered, classical.CurvePreferences) {
		t.Errorf("offered %v, want what the client offered %v", he.Offered, classical.CurvePreferences)
	}
	if a, ok := transport.PeerAlertOf(err); !ok || a != 40 {
		t.Errorf("the client got %v, want a handshake_failure alert", err)
	}

	srv, cs, err := handshake(t, NewTerminator(newStore(t, hybridtls.Prefer, m), nil), classical)
	if err != nil || srv.err != nil {
		t.Fatalf("prefer: client %v, server %v", err, srv.err)
	}
	if srv.info.Group != tls.X25519 || srv.info.PostQuantum() || cs.CurveID != tls.X25519 {
		t.Errorf("prefer: group %v, want X25519 reported as not post-quantum", srv.info.Group)
	}
}

func TestTerminatorResumptionKeepsHybridKeyExchange(t *testing.T) {
	ca := testca.New(t, "test CA")
	s := newStore(t, hybridtls.Strict, &Material{Certificates: []tls.Certificate{ca.Issue(t, testca.Leaf{DNS: []string{"a.example"}}).Certificate}})
	term := NewTerminator(s, []string{"h2", "http/1.1"})
	cc := clientConfig(ca, "a.example")
	cc.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	cc.NextProtos = []string{"http/1.1"}
	first, _, err := handshake(t, term, cc)
	if err != nil || first.err != nil || first.info.Resumed {
		t.Fatalf("first: client %v, server %v, resumed %v", err, first.err, first.info.Resumed)
	}
	// A reload in between: tickets stay valid, the key exchange is fresh.
	if err := s.Swap(&Material{Certificates: []tls.Certificate{ca.Issue(t, testca.Leaf{DNS: []string{"a.example"}}).Certificate}}); err != nil {
		t.Fatal(err)
	}
	second, cs, err := handshake(t, term, cc)
	if err != nil || second.err != nil {
		t.Fatalf("second: client %v, server %v", err, second.err)
	}
	if !second.info.Resumed || !cs.DidResume {
		t.Fatal("the second connection did not resume")
	}
	if second.info.Group != tls.X25519MLKEM768 || cs.CurveID != tls.X25519MLKEM768 {
		t.Errorf("resumed with group %v, want X25519MLKEM768: resumption must run the hybrid key exchange (psk_dhe_ke)", second.info.Group)
	}
	if second.info.Sig != "resumed" || second.info.ALPN != "http/1.1" {
		t.Errorf("resumed info %+v, want sig resumed and ALPN http/1.1", second.info)
	}
}

func TestTerminatorReload(t *testing.T) {
	ca := testca.New(t, "test CA")
	old := ca.Issue(t, testca.Leaf{DNS: []string{"a.example"}}).Certificate
	s := newStore(t, hybridtls.Strict, &Material{Certificates: []tls.Certificate{old}})
	term := NewTerminator(s, nil)
	_, cs, err := handshake(t, term, clientConfig(ca, "a.example"))
	if err != nil || !slices.Equal(cs.PeerCertificates[0].Raw, old.Leaf.Raw) {
		t.Fatalf("before reload: %v", err)
	}
	if err := s.Swap(&Material{Certificates: []tls.Certificate{{Certificate: old.Certificate}}}); err == nil {
		t.Fatal("Swap took a certificate without a parsed leaf")
	}
	next := ca.Issue(t, testca.Leaf{DNS: []string{"a.example"}, Key: testca.MLDSA65}).Certificate
	if err := s.Swap(&Material{Certificates: []tls.Certificate{next}}); err != nil {
		t.Fatal(err)
	}
	srv, cs, err := handshake(t, term, clientConfig(ca, "a.example"))
	if err != nil || !slices.Equal(cs.PeerCertificates[0].Raw, next.Leaf.Raw) || srv.info.Sig != "ML-DSA-65" {
		t.Fatalf("after reload: err %v, sig %s: the new certificate is not served", err, srv.info.Sig)
	}
}

func TestTerminatorClientAuth(t *testing.T) {
	ca, clients := testca.New(t, "test CA"), testca.New(t, "test CA")
	rules, err := camode.ParseAllow("dns:app.example")
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(t, hybridtls.Strict, &Material{Certificates: []tls.Certificate{ca.Issue(t, testca.Leaf{DNS: []string{"a.example"}}).Certificate}, ClientCAs: clients.Pool, ClientAllow: rules})
	term := NewTerminator(s, nil)
	for _, tt := range []struct {
		name   string
		cert   *tls.Certificate
		reason string
	}{
		{"allowed", ptr(clients.Issue(t, testca.Leaf{DNS: []string{"app.example"}}).Certificate), ""},
		{"no certificate", nil, ReasonTLS},
		{"other name", ptr(clients.Issue(t, testca.Leaf{DNS: []string{"other.example"}}).Certificate), ReasonNotAllowed},
		{"other CA", ptr(ca.Issue(t, testca.Leaf{DNS: []string{"app.example"}}).Certificate), ReasonBadCertificate},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cc := clientConfig(ca, "a.example")
			if tt.cert != nil {
				cc.Certificates = []tls.Certificate{*tt.cert}
			}
			srv, _, err := handshake(t, term, cc)
			if tt.reason == "" {
				if err != nil || srv.err != nil || srv.info.Client != "app.example" {
					t.Fatalf("client %v, server %v, client name %q", err, srv.err, srv.info.Client)
				}
				return
			}
			var he *HandshakeError
			if !errors.As(srv.err, &he) || he.Reason != tt.reason {
				t.Fatalf("server error %v, want reason %s", srv.err, tt.reason)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// serve runs a crypto/tls server with cfg on loopback, answering "ok" to
// each connection, until the test ends.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	return testutil.ServeTLS(t, cfg, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte("ok")) // runs the handshake; a failure is the client's to report
	})
}

func originate(t *testing.T, o *Originator, addr string) (Info, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tc, info, err := o.Handshake(ctx, c)
	if err == nil {
		buf := make([]byte, 2)
		_, err = tc.Read(buf)
	}
	return info, err
}

func TestOriginator(t *testing.T) {
	ca := testca.New(t, "test CA")
	cert := ca.Issue(t, testca.Leaf{DNS: []string{"api.example"}}).Certificate
	addr := serve(t, &tls.Config{Certificates: []tls.Certificate{cert}})
	s := newStore(t, hybridtls.Strict, &Material{RootCAs: ca.Pool})

	info, err := originate(t, NewOriginator(s, "api.example", nil), addr)
	if err != nil {
		t.Fatal(err)
	}
	if info.Group != tls.X25519MLKEM768 || info.Sig != "ECDSA-P256-SHA256" || info.SNI != "api.example" {
		t.Errorf("info %+v, want X25519MLKEM768, ECDSA and SNI api.example", info)
	}

	var he *HandshakeError
	_, err = originate(t, NewOriginator(s, "wrong.example", nil), addr)
	if !errors.As(err, &he) || he.Reason != ReasonBadCertificate {
		t.Errorf("wrong name: %v, want reason %s", err, ReasonBadCertificate)
	}
	_, err = originate(t, NewOriginator(newStore(t, hybridtls.Strict, &Material{}), "api.example", nil), addr)
	if !errors.As(err, &he) || he.Reason != ReasonBadCertificate {
		t.Errorf("system roots: %v, want reason %s for a private CA", err, ReasonBadCertificate)
	}

	classical := serve(t, &tls.Config{Certificates: []tls.Certificate{cert}, CurvePreferences: []tls.CurveID{tls.X25519}})
	_, err = originate(t, NewOriginator(s, "api.example", nil), classical)
	if !errors.As(err, &he) || he.Reason != ReasonNotPostQuantum || !slices.Equal(he.Offered, hybridtls.DefaultGroups) {
		t.Errorf("X25519-only server in strict mode: %v, want reason %s naming the groups offered", err, ReasonNotPostQuantum)
	}
	info, err = originate(t, NewOriginator(newStore(t, hybridtls.Prefer, &Material{RootCAs: ca.Pool}), "api.example", nil), classical)
	if err != nil || info.Group != tls.X25519 {
		t.Errorf("X25519-only server in prefer mode: %v, group %v", err, info.Group)
	}
}

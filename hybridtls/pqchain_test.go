package hybridtls

import (
	"crypto/mldsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/auth/camode"
	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
)

// testChain builds root → intermediates → leaf with the given key kinds
// (root first, leaf last) and returns the leaf as a tls.Certificate with
// its intermediates, and a pool holding the root.
func testChain(t *testing.T, name string, kinds ...testca.Kind) (*tls.Certificate, *x509.CertPool) {
	t.Helper()
	ca := testca.NewRoot(t, name+" root", kinds[0])
	for i, k := range kinds[1 : len(kinds)-1] {
		ca = ca.Intermediate(t, name+" intermediate "+string(rune('a'+i)), k)
	}
	leaf := ca.Issue(t, testca.Leaf{CN: name + " leaf", DNS: []string{name + ".test"}, Key: kinds[len(kinds)-1]})
	return &leaf.Certificate, ca.Pool
}

func TestCAModeMLDSAChains(t *testing.T) {
	tests := []struct {
		name  string
		kinds []testca.Kind // root first, leaf last
		pq    bool
		why   string // in the reason when not pq
		sig   tls.SignatureScheme
	}{
		{"ML-DSA-44 root and leaf", []testca.Kind{testca.MLDSA44, testca.MLDSA44}, true, "", tls.MLDSA44},
		{"ML-DSA-65 root and leaf", []testca.Kind{testca.MLDSA65, testca.MLDSA65}, true, "", tls.MLDSA65},
		{"ML-DSA-87 root, intermediate, leaf", []testca.Kind{testca.MLDSA87, testca.MLDSA87, testca.MLDSA87}, true, "", tls.MLDSA87},
		{"ML-DSA-87 root, ML-DSA-65 leaf", []testca.Kind{testca.MLDSA87, testca.MLDSA65}, true, "", tls.MLDSA65},
		{"classical chain", []testca.Kind{testca.P256, testca.P256}, false, `leaf "classical chain.test": ECDSA P-256 key`, tls.ECDSAWithP256AndSHA256},
		{"classical root, ML-DSA leaf", []testca.Kind{testca.P256, testca.MLDSA65}, false, `leaf "classical root, ML-DSA leaf.test": signed with ECDSA-SHA256`, tls.MLDSA65},
		{"ML-DSA root, classical intermediate", []testca.Kind{testca.MLDSA65, testca.P256, testca.MLDSA65}, false, "signed with ECDSA-SHA256", tls.MLDSA65},
		{"ML-DSA root, classical leaf", []testca.Kind{testca.MLDSA65, testca.P256}, false, "ECDSA P-256 key", tls.ECDSAWithP256AndSHA256},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clientCert, clientPool := testChain(t, tt.name, tt.kinds...)
			serverCert, serverPool := testChain(t, "server", testca.MLDSA65, testca.MLDSA65)
			for _, require := range []bool{false, true} {
				p := Policy{Mode: Strict, Groups: DefaultGroups, Auth: auth.Policy{ServerName: "server.test", RequirePQAuth: require, SettingName: testAuthSettingName}}
				client := side{store: newStore(t, p, &camode.Authenticator{Certificate: clientCert, CAs: serverPool})}
				server := side{store: newStore(t, p, &camode.Authenticator{Certificate: serverCert, CAs: clientPool})}
				_, _, cr, sr := connect(t, client, server)
				if require && !tt.pq {
					if !errors.Is(sr.err, camode.ErrClassicalAuth) || !errors.Is(sr.err, auth.ErrPeerNotAllowed) {
						t.Fatalf("PQT_AUTH=pq server accepted a %s chain: %v", tt.name, sr.err)
					}
					if !strings.Contains(sr.err.Error(), tt.why) {
						t.Errorf("refusal %q does not say %q", sr.err, tt.why)
					}
					// The setting is named in the caller's terms.
					if want := "<RequirePQAuth> accepts only ML-DSA certificate chains"; !strings.Contains(sr.err.Error(), want) {
						t.Errorf("refusal %q does not say %q", sr.err, want)
					}
					continue
				}
				if cr.err != nil || sr.err != nil {
					t.Fatalf("require=%v: client %v, server %v", require, cr.err, sr.err)
				}
				if sr.peer.PQAuth != tt.pq || !cr.peer.PQAuth {
					t.Errorf("require=%v: PQAuth server sees %v (want %v), client sees %v (want true)", require, sr.peer.PQAuth, tt.pq, cr.peer.PQAuth)
				}
				if !strings.Contains(sr.peer.ClassicalReason, tt.why) || tt.pq != (sr.peer.ClassicalReason == "") {
					t.Errorf("ClassicalReason = %q, want %q", sr.peer.ClassicalReason, tt.why)
				}
				if sr.peer.Sig != tt.sig || cr.peer.Sig != tls.MLDSA65 {
					t.Errorf("Sig server sees %v (want %v), client sees %v", sr.peer.Sig, tt.sig, cr.peer.Sig)
				}
			}
		})
	}
}

func TestCAModeClientRefusesClassicalServerUnderPQAuth(t *testing.T) {
	clientCert, clientPool := testChain(t, "client", testca.MLDSA65, testca.MLDSA65)
	serverCert, serverPool := testChain(t, "server", testca.P256, testca.P256)
	p := Policy{Mode: Strict, Groups: DefaultGroups, Auth: auth.Policy{ServerName: "server.test", RequirePQAuth: true}}
	client := side{store: newStore(t, p, &camode.Authenticator{Certificate: clientCert, CAs: serverPool})}
	server := side{store: newStore(t, Policy{Mode: Strict, Groups: DefaultGroups}, &camode.Authenticator{Certificate: serverCert, CAs: clientPool})}
	_, _, cr, _ := connect(t, client, server)
	if !errors.Is(cr.err, camode.ErrClassicalAuth) {
		t.Fatalf("client error = %v, want ErrClassicalAuth", cr.err)
	}
}

func TestRequireMLDSA87(t *testing.T) {
	id87 := func() *pinned.Identity {
		id, err := pinned.GenerateIdentityFor(mldsa.MLDSA87())
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	cnsa2 := Policy{Mode: Strict, Groups: []tls.CurveID{tls.MLKEM1024}, Auth: auth.Policy{RequirePQAuth: true, RequireMLDSA87: true}}
	t.Run("pinned ML-DSA-87", func(t *testing.T) {
		cid, sid := id87(), id87()
		client := side{id: cid, store: newStore(t, cnsa2, &pinned.Authenticator{Identity: cid, Peers: []pinned.Pin{sid.Pin}})}
		server := side{id: sid, store: newStore(t, cnsa2, &pinned.Authenticator{Identity: sid, Peers: []pinned.Pin{cid.Pin}})}
		c, _, cr, sr := connect(t, client, server)
		if cr.err != nil || sr.err != nil {
			t.Fatalf("client %v, server %v", cr.err, sr.err)
		}
		if cr.peer.Sig != tls.MLDSA87 || sr.peer.Sig != tls.MLDSA87 || c.ConnectionState().CurveID != tls.MLKEM1024 {
			t.Errorf("sig %v/%v group %s, want MLDSA87 and MLKEM1024", cr.peer.Sig, sr.peer.Sig, GroupName(c.ConnectionState().CurveID))
		}
	})
	t.Run("pinned ML-DSA-65 peer refused", func(t *testing.T) {
		cid, sid := mustIdentity(t), id87()
		loose := cnsa2
		loose.Auth.RequireMLDSA87 = false
		client := side{id: cid, store: newStore(t, loose, &pinned.Authenticator{Identity: cid, Peers: []pinned.Pin{sid.Pin}})}
		server := side{id: sid, store: newStore(t, cnsa2, &pinned.Authenticator{Identity: sid, Peers: []pinned.Pin{cid.Pin}})}
		_, _, _, sr := connect(t, client, server)
		if !errors.Is(sr.err, auth.ErrNotCNSA2) || !strings.Contains(sr.err.Error(), "ML-DSA-65") {
			t.Fatalf("server error = %v, want auth.ErrNotCNSA2 naming ML-DSA-65", sr.err)
		}
	})
	t.Run("CA chains", func(t *testing.T) {
		serverCert, serverPool := testChain(t, "server", testca.MLDSA87, testca.MLDSA87)
		for _, tt := range []struct {
			kinds []testca.Kind
			ok    bool
		}{
			{[]testca.Kind{testca.MLDSA87, testca.MLDSA87}, true},
			{[]testca.Kind{testca.MLDSA87, testca.MLDSA65}, false},
			{[]testca.Kind{testca.MLDSA65, testca.MLDSA87}, false},
		} {
			clientCert, clientPool := testChain(t, "client", tt.kinds...)
			p := cnsa2
			p.Auth.ServerName = "server.test"
			client := side{store: newStore(t, p, &camode.Authenticator{Certificate: clientCert, CAs: serverPool})}
			server := side{store: newStore(t, p, &camode.Authenticator{Certificate: serverCert, CAs: clientPool})}
			_, _, cr, sr := connect(t, client, server)
			if tt.ok && (cr.err != nil || sr.err != nil) {
				t.Errorf("%v: client %v, server %v", tt.kinds, cr.err, sr.err)
			}
			if !tt.ok && !errors.Is(sr.err, auth.ErrNotCNSA2) {
				t.Errorf("%v: server error = %v, want ErrNotCNSA2", tt.kinds, sr.err)
			}
		}
	})
}

package hybridtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/auth/camode"
	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
)

func caSide(t *testing.T, ca *testca.CA, cert *tls.Certificate, serverName, allow string) side {
	t.Helper()
	rules, err := camode.ParseAllow(allow)
	if err != nil {
		t.Fatal(err)
	}
	return side{store: newStore(t, Policy{Mode: Strict, Groups: DefaultGroups, Auth: auth.Policy{ServerName: serverName}},
		&camode.Authenticator{Certificate: cert, CAs: ca.Pool, Allow: rules})}
}

func TestCAModeAllowRules(t *testing.T) {
	ca := testca.New(t, "test CA")
	serverCert := &ca.Issue(t, testca.Leaf{CN: "tunnel server", DNS: []string{"server.tunnel.test"}}).Certificate
	clientA := &ca.Issue(t, testca.Leaf{CN: "client a", DNS: []string{"a.clients.test"}, URIs: []string{"spiffe://test/ns/a"}}).Certificate
	clientB := &ca.Issue(t, testca.Leaf{CN: "client b", DNS: []string{"b.other.test"}}).Certificate
	clientDeep := &ca.Issue(t, testca.Leaf{CN: "client deep", DNS: []string{"x.a.clients.test"}}).Certificate

	tests := []struct {
		name      string
		client    *tls.Certificate
		allow     string // the server's PQT_ALLOW
		ok        bool
		wantName  string // the name the server reports for the client
		clientSee string // the name the client reports for the server
	}{
		{name: "any CA-signed peer when no rules", client: clientB, allow: "", ok: true, wantName: "b.other.test"},
		{name: "dns wildcard", client: clientA, allow: "dns:*.clients.test", ok: true, wantName: "spiffe://test/ns/a"},
		{name: "dns wildcard one label only", client: clientDeep, allow: "dns:*.clients.test"},
		{name: "dns exact", client: clientB, allow: "dns:a.clients.test,dns:b.other.test", ok: true, wantName: "b.other.test"},
		{name: "dns denied", client: clientB, allow: "dns:*.clients.test"},
		{name: "uri", client: clientA, allow: "uri:spiffe://test/ns/a", ok: true, wantName: "spiffe://test/ns/a"},
		{name: "uri denied", client: clientA, allow: "uri:spiffe://test/ns/b"},
		{name: "cn", client: clientB, allow: "cn:client b", ok: true, wantName: "b.other.test"},
		{name: "cn denied", client: clientA, allow: "cn:client b"},
		{name: "named rule names the peer", client: clientA, allow: "web=dns:*.clients.test", ok: true, wantName: "web"},
		{name: "first named match wins over unnamed", client: clientA, allow: "uri:spiffe://test/ns/a,jobs=cn:client a,web=dns:*.clients.test", ok: true, wantName: "jobs"},
		{name: "named rule denied", client: clientB, allow: "web=dns:*.clients.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := caSide(t, ca, tt.client, "server.tunnel.test", "")
			server := caSide(t, ca, serverCert, "", tt.allow)
			c, _, cr, sr := connect(t, client, server)
			if !tt.ok {
				if !errors.Is(sr.err, auth.ErrPeerNotAllowed) {
					t.Fatalf("server error = %v, want ErrPeerNotAllowed", sr.err)
				}
				return
			}
			if cr.err != nil || sr.err != nil {
				t.Fatalf("client err %v, server err %v", cr.err, sr.err)
			}
			if cr.peer.PQAuth || sr.peer.PQAuth {
				t.Errorf("PQAuth client=%v server=%v, want false for classical certificates", cr.peer.PQAuth, sr.peer.PQAuth)
			}
			if sr.peer.Name != tt.wantName {
				t.Errorf("server sees client %q, want %q", sr.peer.Name, tt.wantName)
			}
			if cr.peer.Name != "server.tunnel.test" {
				t.Errorf("client sees server %q, want server.tunnel.test", cr.peer.Name)
			}
			if g := c.ConnectionState().CurveID; g != tls.X25519MLKEM768 {
				t.Errorf("CA mode negotiated %s, want X25519MLKEM768", GroupName(g))
			}
		})
	}
}

// TestCAModeRecheck re-checks an established CA-mode peer after the
// material changes: a CA that no longer signs it, or rules that no longer
// match it, refuse it; a renamed rule renames it.
func TestCAModeRecheck(t *testing.T) {
	ca, other := testca.New(t, "test CA"), testca.New(t, "other CA")
	serverCert := &ca.Issue(t, testca.Leaf{CN: "tunnel server", DNS: []string{"server.tunnel.test"}}).Certificate
	clientCert := &ca.Issue(t, testca.Leaf{CN: "client", DNS: []string{"client.test"}}).Certificate
	client := caSide(t, ca, clientCert, "server.tunnel.test", "")
	server := caSide(t, ca, serverCert, "", "app=dns:client.test")
	c, s, cr, sr := connect(t, client, server)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("client err %v, server err %v", cr.err, sr.err)
	}
	cs := s.ConnectionState()
	swap := func(cas *x509.CertPool, allow string) {
		t.Helper()
		rules, err := camode.ParseAllow(allow)
		if err != nil {
			t.Fatal(err)
		}
		if err := server.store.Swap(&camode.Authenticator{Certificate: serverCert, CAs: cas, Allow: rules}); err != nil {
			t.Fatal(err)
		}
	}
	if name, err := server.store.Recheck(&cs, RoleServer); err != nil || name != "app" {
		t.Errorf("Recheck = %q, %v; want app", name, err)
	}
	swap(ca.Pool, "db=dns:client.test")
	if name, err := server.store.Recheck(&cs, RoleServer); err != nil || name != "db" {
		t.Errorf("Recheck after renaming the rule = %q, %v; want db", name, err)
	}
	swap(ca.Pool, "dns:someone.else")
	if _, err := server.store.Recheck(&cs, RoleServer); !errors.Is(err, auth.ErrPeerNotAllowed) {
		t.Errorf("Recheck with no matching rule = %v, want ErrPeerNotAllowed", err)
	}
	// An empty list of rules from a file accepts nobody; an empty PQT_ALLOW
	// accepts any certificate the CA signed.
	if err := server.store.Swap(&camode.Authenticator{Certificate: serverCert, CAs: ca.Pool, AllowListed: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := server.store.Recheck(&cs, RoleServer); !errors.Is(err, auth.ErrPeerNotAllowed) {
		t.Errorf("Recheck with an empty listed allow file = %v, want ErrPeerNotAllowed", err)
	}
	swap(ca.Pool, "")
	if name, err := server.store.Recheck(&cs, RoleServer); err != nil || name != "client.test" {
		t.Errorf("Recheck with no rules = %q, %v; want client.test", name, err)
	}
	swap(other.Pool, "")
	if _, err := server.store.Recheck(&cs, RoleServer); !errors.Is(err, camode.ErrBadCertificate) {
		t.Errorf("Recheck against another CA = %v, want ErrBadCertificate", err)
	}
	ccs := c.ConnectionState()
	if name, err := client.store.Recheck(&ccs, RoleClient); err != nil || name != "server.tunnel.test" {
		t.Errorf("client Recheck = %q, %v; want server.tunnel.test", name, err)
	}
}

func TestCAModeClientAllowRules(t *testing.T) {
	ca := testca.New(t, "test CA")
	serverCert := &ca.Issue(t, testca.Leaf{CN: "tunnel server", DNS: []string{"server.tunnel.test"}}).Certificate
	clientCert := &ca.Issue(t, testca.Leaf{CN: "client", DNS: []string{"client.test"}}).Certificate
	server := caSide(t, ca, serverCert, "", "")

	client := caSide(t, ca, clientCert, "server.tunnel.test", "cn:someone else")
	if _, _, cr, _ := connect(t, client, server); !errors.Is(cr.err, auth.ErrPeerNotAllowed) {
		t.Fatalf("client error = %v, want ErrPeerNotAllowed", cr.err)
	}
	client = caSide(t, ca, clientCert, "server.tunnel.test", "cn:tunnel server")
	if _, _, cr, sr := connect(t, client, server); cr.err != nil || sr.err != nil {
		t.Fatalf("client err %v, server err %v", cr.err, sr.err)
	}
}

func TestCAModeRefusesOtherCAAndWrongName(t *testing.T) {
	ca, rogue := testca.New(t, "test CA"), testca.New(t, "rogue CA")
	serverCert := &ca.Issue(t, testca.Leaf{CN: "tunnel server", DNS: []string{"server.tunnel.test"}}).Certificate
	server := caSide(t, ca, serverCert, "", "")

	t.Run("client from another CA", func(t *testing.T) {
		client := caSide(t, ca, &rogue.Issue(t, testca.Leaf{CN: "rogue", DNS: []string{"a.clients.test"}}).Certificate, "server.tunnel.test", "")
		_, _, cr, sr := connect(t, client, server)
		// The client has no certificate from a CA the server asks for, so
		// crypto/tls sends none; either way the server must refuse.
		var uerr x509.UnknownAuthorityError
		if !errors.As(sr.err, &uerr) && (sr.err == nil || !strings.Contains(sr.err.Error(), "certificate")) {
			t.Fatalf("server error = %v, want a certificate error", sr.err)
		}
		if cr.err == nil && sr.err == nil {
			t.Fatal("both sides authenticated")
		}
	})
	t.Run("server name mismatch", func(t *testing.T) {
		client := caSide(t, ca, &ca.Issue(t, testca.Leaf{CN: "client", DNS: []string{"client.test"}}).Certificate, "other.tunnel.test", "")
		_, _, cr, _ := connect(t, client, server)
		var herr x509.HostnameError
		if !errors.As(cr.err, &herr) {
			t.Fatalf("client error = %v, want a hostname error", cr.err)
		}
	})
	t.Run("pinned identity against CA server", func(t *testing.T) {
		id := mustIdentity(t)
		client := pinnedSide(t, Strict, DefaultGroups, id, id.Pin)
		_, _, _, sr := connect(t, client, server)
		if sr.err == nil {
			t.Fatal("CA server accepted a self-signed pinned identity")
		}
	})
}

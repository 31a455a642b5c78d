package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/proxy"
)

// writeCert writes a self-signed ECDSA certificate for name and its key
// (mode 0600) to dir and returns their paths.
func writeCert(t *testing.T, dir, name string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	pk8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func TestParseTLSRoutes(t *testing.T) {
	dir := t.TempDir()
	certA, keyA := writeCert(t, dir, "a.example")
	certB, keyB := writeCert(t, dir, "b.example")
	local := map[string]string{
		"PQT_FORWARD": "web=tls://127.0.0.1:8443,api=127.0.0.1:9000", "PQT_TARGET": "web=127.0.0.1:8080,api=tls://api.example:443",
		"PQT_TLS_CERT": certA + "," + certB, "PQT_TLS_KEY": keyA + "," + keyB, "PQT_TLS_CA": certB,
		"PQT_TLS_ALPN": "web=h2+http/1.1,api=http/1.1", "PQT_TLS_SERVER_NAME": "api=b.example",
	}

	t.Run("local wrapper without a tunnel", func(t *testing.T) {
		c, err := Parse(local)
		if err != nil {
			t.Fatal(err)
		}
		e := c.Engine
		if e.Mode != proxy.ModeLocal || c.Auth != nil || e.Transport != nil {
			t.Errorf("mode %q, authenticator %v: want local with no tunnel", e.Mode, c.Auth)
		}
		if !e.Forward[0].IsTLS() || !slices.Equal(e.Forward[0].ALPN, []string{"h2", "http/1.1"}) {
			t.Errorf("forward web = %+v, want tls with ALPN h2+http/1.1", e.Forward[0])
		}
		if tg := e.Target[1]; !tg.IsTLS() || tg.ServerName != "b.example" || !slices.Equal(tg.ALPN, []string{"http/1.1"}) {
			t.Errorf("target api = %+v, want tls, server name b.example, ALPN http/1.1", tg)
		}
		if len(c.TLSMaterial.Certificates) != 2 || c.TLSMaterial.RootCAs == nil {
			t.Errorf("TLS material: %d certificates, roots %v", len(c.TLSMaterial.Certificates), c.TLSMaterial.RootCAs)
		}
		if m, err := c.LoadTLSMaterial(); err != nil || len(m.Certificates) != 2 {
			t.Errorf("reload: %v", err)
		}
	})

	te := newTestEnv(t)
	for _, tt := range []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"no certificate", map[string]string{"PQT_FORWARD": "web=tls://:8443", "PQT_TARGET": "web=127.0.0.1:80"}, "PQT_TLS_CERT: not set"},
		{"keys not paired", map[string]string{"PQT_FORWARD": "web=tls://:8443", "PQT_TARGET": "web=127.0.0.1:80", "PQT_TLS_CERT": certA + "," + certB, "PQT_TLS_KEY": keyA}, "PQT_TLS_KEY: 1 keys for 2"},
		{"swapped keys", map[string]string{"PQT_FORWARD": "web=tls://:8443", "PQT_TARGET": "web=127.0.0.1:80", "PQT_TLS_CERT": certA, "PQT_TLS_KEY": keyB}, "PQT_TLS_CERT/PQT_TLS_KEY"},
		{"ALPN for a plain route", map[string]string{"PQT_FORWARD": "web=tls://:8443", "PQT_TARGET": "web=127.0.0.1:80", "PQT_TLS_CERT": certA, "PQT_TLS_KEY": keyA, "PQT_TLS_ALPN": "other=h2"}, `PQT_TLS_ALPN: route "other"`},
		{"ALPN with commas", map[string]string{"PQT_FORWARD": "web=tls://:8443", "PQT_TARGET": "web=127.0.0.1:80", "PQT_TLS_CERT": certA, "PQT_TLS_KEY": keyA, "PQT_TLS_ALPN": "web=h2,http/1.1"}, "PQT_TLS_ALPN"},
		{"server name for a forward route", map[string]string{"PQT_FORWARD": "web=tls://:8443", "PQT_TARGET": "web=127.0.0.1:80", "PQT_TLS_CERT": certA, "PQT_TLS_KEY": keyA, "PQT_TLS_SERVER_NAME": "web=x"}, "PQT_TLS_SERVER_NAME"},
		{"allow without client CA", map[string]string{"PQT_FORWARD": "web=tls://:8443", "PQT_TARGET": "web=127.0.0.1:80", "PQT_TLS_CERT": certA, "PQT_TLS_KEY": keyA, "PQT_TLS_ALLOW": "dns:x"}, "PQT_TLS_ALLOW: needs PQT_TLS_CLIENT_CA"},
		{"TLS settings without a tls route", map[string]string{"PQT_MODE": "listen", "PQT_TUNNEL": ":1", "PQT_TARGET": "127.0.0.1:80", "PQT_TLS_CA": certA, "PQT_IDENTITY": te.identity, "PQT_PEERS": te.peerPin}, "PQT_TLS_CA: set, but no route"},
		{"identity without a tunnel", map[string]string{"PQT_FORWARD": "api=:9000", "PQT_TARGET": "api=tls://h:443", "PQT_IDENTITY": te.identity}, "PQT_IDENTITY: set, but every route joins"},
		{"allow list without a tunnel", map[string]string{"PQT_FORWARD": "api=:9000@app1", "PQT_TARGET": "api=tls://h:443"}, "'@' names tunnel peers"},
		{"plain and plain need a tunnel", map[string]string{"PQT_FORWARD": "api=:9000", "PQT_TARGET": "api=127.0.0.1:80"}, "PQT_MODE: not set"},
		{"a route left for the tunnel", map[string]string{"PQT_FORWARD": "api=:9000,db=:5432", "PQT_TARGET": "api=tls://h:443"}, "PQT_MODE: not set"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse: %v, want an error with %q", err, tt.wantErr)
			}
		})
	}

	t.Run("terminated route through the tunnel", func(t *testing.T) {
		env := map[string]string{"PQT_MODE": "dial", "PQT_TUNNEL": "peer:8443", "PQT_FORWARD": "web=tls://:8443", "PQT_TLS_CERT": certA, "PQT_TLS_KEY": keyA,
			"PQT_IDENTITY": te.identity, "PQT_PEERS": te.peerPin}
		c, err := Parse(env)
		if err != nil {
			t.Fatal(err)
		}
		if c.Engine.Mode != proxy.ModeDial || c.Auth == nil || len(proxy.LocalJoins(c.Engine.Forward, c.Engine.Target)) != 0 {
			t.Errorf("mode %q: want a dial side carrying the terminated route through the tunnel", c.Engine.Mode)
		}
	})
}

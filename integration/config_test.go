package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBadConfig starts the binary with one bad setting at a time: each must
// exit non-zero within 5s, before listening, with an error that names the
// variable at fault. The base configuration is checked to start first, so
// each failure is the one variable's doing.
func TestBadConfig(t *testing.T) {
	ctx := testContext(t, 90*time.Second)
	self, peer := identityNamed(t, "listen"), identityNamed(t, "dial")
	base := func() map[string]string {
		env := sideEnv("listen", "tcp", self, peer, nil)
		env["PQT_TUNNEL"] = loopback(freePort(t))
		env["PQT_TARGET"] = loopback(freePort(t))
		return env
	}

	t.Run("base configuration starts", func(t *testing.T) {
		p := startProc(t, ctx, "pqtunnel", base(), pqtunnelBin)
		p.waitLog(t, within(t, ctx, 10*time.Second), msgIs("tunnel listening"))
	})

	readable := filepath.Join(t.TempDir(), "readable.id")
	data, err := os.ReadFile(self.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(readable, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(readable, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		set    map[string]string
		unset  []string
		want   string // the variable the error must name
		detail string // optional further text the error must contain
	}{
		{name: "missing PQT_MODE", unset: []string{"PQT_MODE"}, want: "PQT_MODE"},
		{name: "PQT_MODE=foo", set: map[string]string{"PQT_MODE": "foo"}, want: "PQT_MODE", detail: "foo"},
		{name: "missing PQT_TUNNEL", unset: []string{"PQT_TUNNEL"}, want: "PQT_TUNNEL"},
		{name: "PQT_TRANSPORT=udp", set: map[string]string{"PQT_TRANSPORT": "udp"}, want: "PQT_TRANSPORT", detail: "udp"},
		{name: "PQT_PQ=maybe", set: map[string]string{"PQT_PQ": "maybe"}, want: "PQT_PQ", detail: "maybe"},
		{name: "classical PQT_GROUPS in strict mode", set: map[string]string{"PQT_GROUPS": "X25519"}, want: "PQT_GROUPS", detail: "X25519"},
		{name: "PQT_HANDSHAKE_TIMEOUT=abc", set: map[string]string{"PQT_HANDSHAKE_TIMEOUT": "abc"}, want: "PQT_HANDSHAKE_TIMEOUT", detail: "abc"},
		{name: "missing identity", unset: []string{"PQT_IDENTITY"}, want: "PQT_IDENTITY"},
		{name: "identity readable by others", set: map[string]string{"PQT_IDENTITY": readable}, want: "PQT_IDENTITY", detail: "644"},
		{name: "PQT_PEERS=garbage", set: map[string]string{"PQT_PEERS": "garbage"}, want: "PQT_PEERS", detail: "garbage"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := base()
			for k, v := range tc.set {
				env[k] = v
			}
			for _, k := range tc.unset {
				delete(env, k)
			}
			p := startProc(t, ctx, "pqtunnel", env, pqtunnelBin)
			if code := p.wait(t, within(t, ctx, 5*time.Second)); code == 0 {
				t.Fatalf("exit code 0, want non-zero")
			}
			out := p.stderr.String()
			if !strings.Contains(out, tc.want+":") {
				t.Errorf("stderr does not name %s:\n%s", tc.want, out)
			}
			if !strings.Contains(out, tc.detail) {
				t.Errorf("stderr does not mention %q:\n%s", tc.detail, out)
			}
			if strings.Contains(out, "tunnel listening") {
				t.Errorf("started listening despite the bad setting:\n%s", out)
			}
		})
	}
}

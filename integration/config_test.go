package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

// TestMisspeltVariable starts the binary with a misspelt optional variable,
// and with a misspelt required one: each must exit non-zero within 5s,
// before listening, naming the misspelt variable and the one meant.
func TestMisspeltVariable(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	self, peer := identityNamed(t, "listen"), identityNamed(t, "dial")
	cases := []struct {
		name   string
		rename map[string]string // variable to the misspelling it is set as
		set    map[string]string
		want   []string
	}{
		{name: "optional PQT_CONNECTONS", set: map[string]string{"PQT_CONNECTONS": "4"},
			want: []string{"PQT_CONNECTONS is not a pqtunnel variable; did you mean PQT_CONNECTIONS?"}},
		{name: "required PQT_TUNNLE", rename: map[string]string{"PQT_TUNNEL": "PQT_TUNNLE"},
			want: []string{"PQT_TUNNLE is not a pqtunnel variable; did you mean PQT_TUNNEL?", "PQT_TUNNEL: not set"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := sideEnv("listen", "tcp", self, peer, nil)
			env["PQT_TUNNEL"] = loopback(freePort(t))
			env["PQT_TARGET"] = loopback(freePort(t))
			for from, to := range tc.rename {
				env[to] = env[from]
				delete(env, from)
			}
			for k, v := range tc.set {
				env[k] = v
			}
			p := startProc(t, ctx, "pqtunnel", env, pqtunnelBin)
			if code := p.wait(t, within(t, ctx, 5*time.Second)); code == 0 {
				t.Fatalf("exit code 0, want non-zero")
			}
			out := p.stderr.String()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("stderr lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "tunnel listening") {
				t.Errorf("started listening despite the misspelt variable:\n%s", out)
			}
		})
	}
}

// TestSubcommandHelp runs each subcommand of the real binary with --help:
// it prints its usage and exits 0 at once, and demo starts nothing (it
// would print its origins and log the tunnel listening). An unknown flag
// exits 2 with a message.
func TestSubcommandHelp(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	for _, cmd := range []string{"demo", "check", "keygen", "version", "run"} {
		t.Run(cmd, func(t *testing.T) {
			p := startProc(t, ctx, "pqtunnel "+cmd, nil, pqtunnelBin, cmd, "--help")
			if code := p.wait(t, within(t, ctx, 5*time.Second)); code != 0 {
				t.Errorf("%s --help exited %d, want 0", cmd, code)
			}
			if out := p.stdout.String(); !strings.HasPrefix(out, "usage: pqtunnel ") || strings.Contains(out, "origins:") {
				t.Errorf("%s --help printed %q, want only the usage", cmd, out)
			}
			if errOut := p.stderr.String(); errOut != "" {
				t.Errorf("%s --help wrote to stderr (did it start?):\n%s", cmd, errOut)
			}

			p = startProc(t, ctx, "pqtunnel "+cmd, nil, pqtunnelBin, cmd, "--no-such-flag")
			if code := p.wait(t, within(t, ctx, 5*time.Second)); code != 2 {
				t.Errorf("%s --no-such-flag exited %d, want 2", cmd, code)
			}
			if !strings.Contains(p.stderr.String(), "no-such-flag") {
				t.Errorf("%s --no-such-flag: stderr does not name the flag:\n%s", cmd, p.stderr.String())
			}
		})
	}
}

// TestVersionFromBuildInfo checks that 'pqtunnel version' prints what the
// binary's build info holds: the Go version, and the commit when the build
// stamped one (GOFLAGS=-buildvcs=false leaves it out).
func TestVersionFromBuildInfo(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	p := startProc(t, ctx, "pqtunnel version", nil, pqtunnelBin, "version")
	if code := p.wait(t, within(t, ctx, 5*time.Second)); code != 0 {
		t.Fatalf("version exited %d", code)
	}
	out := p.stdout.String()
	if !strings.HasPrefix(out, "pqtunnel ") || !strings.Contains(out, runtime.Version()) {
		t.Errorf("version printed %q, want pqtunnel and %s", out, runtime.Version())
	}
	info, err := exec.CommandContext(ctx, "go", "version", "-m", pqtunnelBin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	for _, line := range strings.Split(string(info), "\n") {
		if _, rev, ok := strings.Cut(line, "vcs.revision="); ok {
			if rev = strings.TrimSpace(rev); !strings.Contains(out, "rev "+rev[:min(len(rev), 12)]) {
				t.Errorf("version printed %q, want the revision %s", out, rev)
			}
			return
		}
	}
	t.Logf("the build stamped no revision; version printed %q", out)
}

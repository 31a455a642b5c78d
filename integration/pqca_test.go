package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
)

// pqtunnelCA runs 'pqtunnel ca ARGS...' and fails the test if it fails.
func pqtunnelCA(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, pqtunnelBin, append([]string{"ca"}, args...)...)
	cmd.Env = testutil.ChildEnv(nil)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("pqtunnel ca %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
}

// caFiles are a CA-mode side's PQT_CERT, PQT_KEY and PQT_CA.
type caFiles struct{ cert, key, ca string }

func (f caFiles) env(extra map[string]string) map[string]string {
	env := map[string]string{"PQT_IDENTITY": "", "PQT_PEERS": "", "PQT_CERT": f.cert, "PQT_KEY": f.key, "PQT_CA": f.ca}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// issueWithCLI issues a leaf for dns from the CA in caDir with 'pqtunnel ca issue'.
func issueWithCLI(t *testing.T, caDir, dir, name, dns string) caFiles {
	t.Helper()
	prefix := filepath.Join(dir, name)
	pqtunnelCA(t, "issue", "--ca", caDir, "--name", "dns:"+dns, "--uri", "spiffe://test/"+name, "--days", "2", "-o", prefix)
	return caFiles{cert: prefix + ".crt", key: prefix + ".key", ca: filepath.Join(caDir, "ca.crt")}
}

// TestCAModeWithPQTunnelCA issues ML-DSA certificates with 'pqtunnel ca'
// and runs a CA-mode pair with PQT_AUTH=pq on each transport: both sides log
// pq_auth=true and sig=ML-DSA-65 and carry traffic. The same listen side
// refuses a classical chain, an ML-DSA certificate from another CA and one
// outside PQT_ALLOW.
func TestCAModeWithPQTunnelCA(t *testing.T) {
	dir := t.TempDir()
	caDir, otherDir := filepath.Join(dir, "ca"), filepath.Join(dir, "other")
	pqtunnelCA(t, "init", "-o", caDir)
	pqtunnelCA(t, "init", "-o", otherDir, "-alg", "ML-DSA-87")
	server := issueWithCLI(t, caDir, dir, "server", "server.example")
	good := issueWithCLI(t, caDir, dir, "good", "good.example")
	evil := issueWithCLI(t, caDir, dir, "evil", "evil.example")
	stranger := issueWithCLI(t, otherDir, dir, "stranger", "good.example")
	classicalCA := testca.New(t, "classical").Save(t, dir)
	classical := classicalCA.Issue(t, testca.Leaf{DNS: []string{"good.example"}}).Save(t, dir, "classical")
	// The listen side trusts both roots, so the classical chain verifies and
	// only PQT_AUTH=pq refuses it.
	bundle := filepath.Join(dir, "bundle.pem")
	writeBundle(t, bundle, server.ca, classicalCA.Path)

	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)
		o := startEcho(t)
		// At debug each refusal has its own line: past the first per source
		// and reason they are logged at DEBUG only.
		lenv := server.env(map[string]string{"PQT_TARGET": o.addr(), "PQT_AUTH": "pq", "PQT_ALLOW": "dns:good.example", "PQT_CA": bundle, "PQT_LOG_LEVEL": "debug"})
		l := startListen(t, ctx, 0, transport, lenv)
		dialEnv := func(f caFiles) map[string]string {
			return f.env(map[string]string{"PQT_CONNECTIONS": "1", "PQT_SERVER_NAME": "server.example", "PQT_AUTH": "pq", "PQT_CA": server.ca})
		}

		d := startDial(t, ctx, l.tunnelAddr, transport, nil, dialEnv(good))
		connected := msgIs("tunnel connected", "transport", transport, "pq_auth", "true", "sig", "ML-DSA-65")
		dl := d.waitLog(t, within(t, ctx, 20*time.Second), connected)
		ll := l.waitLog(t, within(t, ctx, 5*time.Second), connected)
		if ll.str("peer") != "spiffe://test/good" || dl.str("peer") != "spiffe://test/server" {
			t.Errorf("peers: listen sees %q, dial sees %q", ll.str("peer"), dl.str("peer"))
		}
		if n := len(l.logs(msgIs("peer authenticated classically only"))); n != 0 {
			t.Errorf("listen side logged %d classical authentications", n)
		}
		if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(61, 128<<10)); err != nil {
			t.Fatalf("traffic over an ML-DSA CA-mode tunnel: %v", err)
		}

		refused := []struct {
			name, reason, errHas string
			files                caFiles
		}{
			{"classical chain", "peer_not_allowed", "PQT_AUTH=pq accepts only ML-DSA certificate chains", caFiles{cert: classical.CertPath, key: classical.KeyPath, ca: server.ca}},
			{"ML-DSA certificate from another CA", "bad_certificate", "unknown authority", stranger},
			{"ML-DSA certificate outside PQT_ALLOW", "peer_not_allowed", `"spiffe://test/evil" matches no PQT_ALLOW rule`, evil},
		}
		for _, r := range refused {
			startDial(t, ctx, l.tunnelAddr, transport, nil, dialEnv(r.files))
			if err := awaitLogWith(within(t, ctx, 20*time.Second), l.proc, msgIs("tunnel handshake refused", "reason", r.reason), "err", r.errHas); err != nil {
				t.Errorf("%s: %v", r.name, err)
			}
		}
		if n := len(l.logs(msgIs("tunnel connected"))); n != 1 {
			t.Errorf("listen side logged %d tunnel connections, want only the good one", n)
		}
	})
}

func writeBundle(t *testing.T, path string, parts ...string) {
	t.Helper()
	var b []byte
	for _, p := range parts {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, data...)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// awaitLogWith waits for a line matching m whose attribute k contains sub.
func awaitLogWith(ctx context.Context, p *proc, m logMatch, k, sub string) error {
	for n := 1; ; {
		got, err := p.awaitLogs(ctx, n, m)
		for _, l := range got {
			if strings.Contains(l.str(k), sub) {
				return nil
			}
		}
		if err != nil {
			return fmt.Errorf("no %s line with %s containing %q: %w", m, k, sub, err)
		}
		n = len(got) + 1
	}
}

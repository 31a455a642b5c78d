package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
)

// trLocal starts a side with no tunnel (every route joins locally) with
// env, and waits until its n forward routes listen.
func trLocal(t *testing.T, ctx context.Context, name string, n int, env map[string]string) *proc {
	t.Helper()
	e := map[string]string{"PQT_LOG_FORMAT": "json"}
	for k, v := range env {
		e[k] = v
	}
	p := startProc(t, ctx, name, e, pqtunnelBin)
	if _, err := p.awaitLogs(within(t, ctx, 15*time.Second), n, msgIs("forwarding")); err != nil {
		t.Fatal(err)
	}
	return p
}

// trNginx runs nginx on a free loopback port serving one page whose text
// is body, and returns its address.
func trNginx(t *testing.T, ctx context.Context, body string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("<!doctype html><html><body><h1 id=m>"+body+"</h1></body></html>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return startNginx(t, ctx, dir, "", "root "+dir+";\n\t\tlocation = /favicon.ico { return 204; }")
}

// TestTLSTerminatorServesChromiumThroughTheTunnel: headless Chromium loads
// a page from nginx through a tls:// forward route on the dial side, whose
// clients go through the tunnel to the listen side's plain target; the dial
// side logs the browser's hybrid group, the SNI, the ALPN and the ML-DSA-65
// certificate (Chromium 156 offers ML-DSA in its signature algorithms, so
// it is chosen over the ECDSA one beside it), and /status shows them.
func TestTLSTerminatorServesChromiumThroughTheTunnel(t *testing.T) {
	ctx := testContext(t, 150*time.Second)
	dir := t.TempDir()
	ca := testca.New(t, "web-ca").Save(t, dir)
	ec := ca.Issue(t, testca.Leaf{DNS: []string{"www.example.test"}}).Save(t, dir, "web-ec")
	pq := ca.Issue(t, testca.Leaf{DNS: []string{"www.example.test"}, Key: testca.MLDSA65}).Save(t, dir, "web-pq")
	nginx := trNginx(t, ctx, "served-through-pqtunnel")

	l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": "web=" + nginx})
	self, peer := identityNamed(t, "dial"), identityNamed(t, "listen")
	env := sideEnv("dial", "tcp", self, peer, nil)
	web := loopback(freePort(t))
	met := metAddr(t)
	env["PQT_TUNNEL"] = l.tunnelAddr
	env["PQT_CONNECTIONS"] = "1"
	env["PQT_FORWARD"] = "web=tls://" + web
	env["PQT_TLS_CERT"] = pq.CertPath + "," + ec.CertPath
	env["PQT_TLS_KEY"] = pq.KeyPath + "," + ec.KeyPath
	env["PQT_TLS_ALPN"] = "web=http/1.1"
	env["PQT_METRICS"] = met
	d := startProc(t, ctx, "dial side", env, pqtunnelBin)
	d.waitLog(t, within(t, ctx, 20*time.Second), msgIs("tunnel connected", "group", "X25519MLKEM768"))

	_, port, _ := net.SplitHostPort(web)
	dom := string(runChromium(t, ctx, "https://www.example.test:"+port+"/", "--dump-dom",
		"--host-resolver-rules=MAP www.example.test 127.0.0.1", "--ignore-certificate-errors"))
	if !strings.Contains(dom, "served-through-pqtunnel") {
		t.Fatalf("chromium did not get nginx's page through the terminator; DOM:\n%s", dom)
	}
	got := d.waitLog(t, within(t, ctx, 10*time.Second), msgIs("TLS connected", "tls", "terminate", "route", "web"))
	t.Logf("dial side: %v", got)
	want := map[string]string{"group": "X25519MLKEM768", "sig": "ML-DSA-65", "sni": "www.example.test", "alpn": "http/1.1"}
	for k, v := range want {
		if got.str(k) != v {
			t.Errorf("TLS connected %s=%q, want %q", k, got.str(k), v)
		}
	}
	_, body, err := metGet(ctx, met, "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Routes []struct {
			Name, Scheme string
			TLS          *struct {
				Handshakes int64
				Last       *struct{ Group, Sig, SNI, ALPN string }
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Routes) != 1 || st.Routes[0].Scheme != "tls" || st.Routes[0].TLS == nil || st.Routes[0].TLS.Last == nil ||
		st.Routes[0].TLS.Last.Group != "X25519MLKEM768" || st.Routes[0].TLS.Last.SNI != "www.example.test" || st.Routes[0].TLS.Handshakes < 1 {
		t.Errorf("/status.json does not show the terminated handshake: %s", body)
	}
}

// trCurl runs curl against https://www.example.test:PORT/ mapped to addr
// and returns its exit code and output.
func trCurl(t *testing.T, ctx context.Context, addr, caPath string) (int, string) {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, "curl", "-sS", "--max-time", "10", "--cacert", caPath,
		"--resolve", "www.example.test:"+port+":127.0.0.1", "https://www.example.test:"+port+"/")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("run curl: %v", err)
	}
	return 0, string(out)
}

// TestTLSTerminatorClassicalCurl: curl with Debian's OpenSSL 3.0 offers
// only classical groups. In strict mode it gets a handshake_failure alert,
// and three attempts in a row make one log line with reason
// not_post_quantum naming what curl offered and three counts; in prefer mode
// it gets the page, logged at WARN and counted as not post-quantum, with
// the ECDSA certificate (OpenSSL 3.0 cannot verify the ML-DSA one). Both
// sides run without a tunnel: the tls:// route joins nginx locally. With
// PQT_ACCESS_LOG=on each refused attempt has its own access line
// (end=refused, reason=not_post_quantum), not rate-limited, and the served
// one its line with the bytes each way.
func TestTLSTerminatorClassicalCurl(t *testing.T) {
	needTool(t, "curl", "curl")
	ctx := testContext(t, 90*time.Second)
	dir := t.TempDir()
	ca := testca.New(t, "web-ca").Save(t, dir)
	ec := ca.Issue(t, testca.Leaf{DNS: []string{"www.example.test"}}).Save(t, dir, "web")
	mldsaLeaf := ca.Issue(t, testca.Leaf{DNS: []string{"www.example.test"}, Key: testca.MLDSA65}).Save(t, dir, "web-pq")
	nginx := trNginx(t, ctx, "hello-curl")
	start := func(t *testing.T, pq string) (*proc, string, string) {
		web, met := loopback(freePort(t)), metAddr(t)
		p := trLocal(t, ctx, "terminator "+pq, 1, map[string]string{
			"PQT_PQ": pq, "PQT_FORWARD": "web=tls://" + web, "PQT_TARGET": "web=" + nginx,
			"PQT_TLS_CERT": mldsaLeaf.CertPath + "," + ec.CertPath, "PQT_TLS_KEY": mldsaLeaf.KeyPath + "," + ec.KeyPath, "PQT_METRICS": met,
			"PQT_ACCESS_LOG": "on",
		})
		return p, web, met
	}

	t.Run("strict", func(t *testing.T) {
		p, web, met := start(t, "strict")
		for i := range 3 {
			code, out := trCurl(t, ctx, web, ca.Path)
			if code != 35 || !strings.Contains(out, "handshake failure") {
				t.Fatalf("curl %d: exit %d, %q; want 35 (TLS handshake failed) with a handshake failure alert", i, code, out)
			}
		}
		refused := p.waitLog(t, within(t, ctx, 10*time.Second), msgIs("TLS handshake refused", "reason", "not_post_quantum", "tls", "terminate"))
		t.Logf("terminator: %v", refused)
		if off := refused.str("offered"); !strings.Contains(off, "X25519") || strings.Contains(off, "MLKEM") {
			t.Errorf("offered=%q, want curl's classical groups", off)
		}
		metAwait(t, ctx, "terminator", met, 10*time.Second, func(m metSet) error {
			return metExpect(m, false, 3, "pqtunnel_tls_refused_total", "route", "web", "side", "terminate", "reason", "not_post_quantum")
		})
		if n := len(p.logs(msgIs("TLS handshake refused"))); n > 2 {
			t.Errorf("%d refusal lines for 3 attempts within a second or two: not rate-limited", n)
		}
		refusedLine := msgIs("connection", "direction", "local", "route", "web", "end", "refused", "reason", "not_post_quantum", "bytes_up", "0", "bytes_down", "0")
		lines, err := p.awaitLogs(within(t, ctx, 10*time.Second), 3, refusedLine)
		if err != nil {
			t.Fatalf("access lines of the refused clients: %v\n%s", err, p.stderr.String())
		}
		if n := len(p.logs(msgIs("connection"))); n != 3 {
			t.Errorf("%d access lines for 3 refused clients", n)
		}
		if lines[0].str("client") == "" || lines[0].str("err") == "" || lines[0].str("target") != nginx {
			t.Errorf("refused client's access line %v: want its client, the error and target %s", lines[0], nginx)
		}
	})
	t.Run("prefer", func(t *testing.T) {
		p, web, met := start(t, "prefer")
		code, out := trCurl(t, ctx, web, ca.Path)
		if code != 0 || !strings.Contains(out, "hello-curl") {
			t.Fatalf("curl: exit %d, %q; want nginx's page", code, out)
		}
		got := p.waitLog(t, within(t, ctx, 10*time.Second), msgIs("TLS connected WITHOUT post-quantum key exchange (PQT_PQ=prefer)", "group", "X25519"))
		t.Logf("terminator: %v", got)
		if got.str("level") != "WARN" || got.str("sig") != "ECDSA-P256-SHA256" {
			t.Errorf("classical connection logged at %s with sig %s, want WARN and ECDSA-P256-SHA256", got.str("level"), got.str("sig"))
		}
		metAwait(t, ctx, "terminator", met, 10*time.Second, func(m metSet) error {
			return metExpect(m, false, 1, "pqtunnel_tls_handshakes_total", "route", "web", "side", "terminate", "group", "X25519", "post_quantum", "false")
		})
		acc := p.waitLog(t, within(t, ctx, 10*time.Second), msgIs("connection", "direction", "local", "route", "web", "target", nginx, "end", "closed"))
		if acc.str("bytes_up") == "0" || acc.str("bytes_down") == "0" || acc.str("client") == "" {
			t.Errorf("served client's access line %v: want its client and bytes both ways", acc)
		}
	})
}

// trServe runs a crypto/tls server with cfg on loopback that answers each
// connection's first line with "tls:" and the line, until the test ends.
func trServe(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	return testutil.ServeTLS(t, cfg, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := readLine(c)
		if err == nil {
			_, _ = c.Write([]byte("tls:" + line)) // the client reports what it got
		}
	})
}

func readLine(r io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < 4096 {
		if _, err := r.Read(one); err != nil {
			return "", err
		}
		b = append(b, one[0])
		if one[0] == '\n' {
			return string(b), nil
		}
	}
	return "", errors.New("line too long")
}

// trAsk sends a line to addr, half-closes, and returns all that comes back.
func trAsk(ctx context.Context, addr, line string) (string, error) {
	c, err := dialClient(ctx, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := c.Write([]byte(line)); err != nil {
		return "", err
	}
	// Half-close: the FIN crosses both TLS hops as close_notify, and the
	// echo origin behind the terminator ends its side in turn.
	if err := c.CloseWrite(); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	_, err = io.Copy(&buf, c)
	return buf.String(), err
}

// TestTLSOriginate: a plain forward route joined to a tls:// target (a
// local TLS wrapper for a legacy client) reaches a crypto/tls server and a
// pqtunnel terminator, verifying their certificates against PQT_TLS_CA for
// the name in PQT_TLS_SERVER_NAME, with a hybrid group; a server that only
// does X25519 is refused in strict mode, and one with a certificate from
// another CA too.
func TestTLSOriginate(t *testing.T) {
	ctx := testContext(t, 120*time.Second)
	dir := t.TempDir()
	ca := testca.New(t, "api-ca").Save(t, dir)
	other := testca.New(t, "other-ca").Save(t, dir)
	ec := ca.Issue(t, testca.Leaf{DNS: []string{"api.example.test"}}).Save(t, dir, "api-ec")
	pq := ca.Issue(t, testca.Leaf{DNS: []string{"api.example.test"}, Key: testca.MLDSA65}).Save(t, dir, "api-pq")

	goServer := trServe(t, &tls.Config{Certificates: []tls.Certificate{ec.Certificate}})
	classical := trServe(t, &tls.Config{Certificates: []tls.Certificate{ec.Certificate}, CurvePreferences: []tls.CurveID{tls.X25519}})
	foreign := trServe(t, &tls.Config{Certificates: []tls.Certificate{other.Issue(t, testca.Leaf{DNS: []string{"api.example.test"}}).Save(t, dir, "foreign").Certificate}})

	// A pqtunnel terminator in front of an echo origin, serving an ML-DSA
	// certificate to clients that offer ML-DSA (Go's do) and ECDSA to others.
	echoO := startEcho(t)
	termAddr := loopback(freePort(t))
	trLocal(t, ctx, "terminator", 1, map[string]string{
		"PQT_FORWARD": "echo=tls://" + termAddr, "PQT_TARGET": "echo=" + echoO.addr(),
		"PQT_TLS_CERT": ec.CertPath + "," + pq.CertPath, "PQT_TLS_KEY": ec.KeyPath + "," + pq.KeyPath,
	})

	routes := map[string]string{"go": goServer, "pqt": termAddr, "classical": classical, "foreign": foreign}
	forward := map[string]string{}
	var fwd, tgt, sni []string
	for _, name := range []string{"go", "pqt", "classical", "foreign"} {
		forward[name] = loopback(freePort(t))
		fwd = append(fwd, name+"="+forward[name])
		tgt = append(tgt, name+"=tls://"+routes[name])
		sni = append(sni, name+"=api.example.test")
	}
	o := trLocal(t, ctx, "originator", len(fwd), map[string]string{
		"PQT_FORWARD": strings.Join(fwd, ","), "PQT_TARGET": strings.Join(tgt, ","),
		"PQT_TLS_CA": ca.Path, "PQT_TLS_SERVER_NAME": strings.Join(sni, ","),
	})

	for _, tt := range []struct {
		route, want, sig string
	}{{"go", "tls:hello go\n", "ECDSA-P256-SHA256"}, {"pqt", "hello pqt\n", "ML-DSA-65"}} {
		got, err := trAsk(within(t, ctx, 15*time.Second), forward[tt.route], "hello "+tt.route+"\n")
		if err != nil || got != tt.want {
			t.Fatalf("route %s: got %q, %v; want %q", tt.route, got, err, tt.want)
		}
		l := o.waitLog(t, within(t, ctx, 10*time.Second), msgIs("TLS connected", "tls", "originate", "route", tt.route))
		t.Logf("originator: %v", l)
		if l.str("group") != "X25519MLKEM768" || l.str("sig") != tt.sig || l.str("sni") != "api.example.test" {
			t.Errorf("route %s: group=%s sig=%s sni=%s, want X25519MLKEM768, %s, api.example.test", tt.route, l.str("group"), l.str("sig"), l.str("sni"), tt.sig)
		}
	}
	for _, tt := range []struct{ route, reason string }{{"classical", "not_post_quantum"}, {"foreign", "bad_certificate"}} {
		got, err := trAsk(within(t, ctx, 15*time.Second), forward[tt.route], "hello\n")
		if err == nil && got != "" {
			t.Errorf("route %s: the client got %q from a server that must be refused", tt.route, got)
		}
		l := o.waitLog(t, within(t, ctx, 10*time.Second), msgIs("TLS handshake refused", "tls", "originate", "route", tt.route))
		t.Logf("originator: %v", l)
		if l.str("reason") != tt.reason {
			t.Errorf("route %s: reason=%s, want %s", tt.route, l.str("reason"), tt.reason)
		}
	}
	if n := len(o.logs(msgIs("TLS connected", "route", "classical"))); n != 0 {
		t.Errorf("the X25519-only server was connected %d times", n)
	}
}

// TestTLSTerminatorResumesAndReloads: a crypto/tls client reconnecting with
// its session ticket resumes, and the terminator logs resumed=true with the
// hybrid group (resumption runs the key exchange again); after the
// certificate files are replaced and SIGHUP sent, new connections get the
// new certificate, and a broken file keeps the one in force.
func TestTLSTerminatorResumesAndReloads(t *testing.T) {
	ctx := testContext(t, 90*time.Second)
	dir := t.TempDir()
	ca := testca.New(t, "web-ca").Save(t, dir)
	first := ca.Issue(t, testca.Leaf{DNS: []string{"www.example.test"}}).Save(t, dir, "first")
	second := ca.Issue(t, testca.Leaf{DNS: []string{"www.example.test"}, Key: testca.MLDSA65}).Save(t, dir, "second")
	certPath, keyPath := filepath.Join(dir, "live.crt"), filepath.Join(dir, "live.key")
	install := func(l *testca.Cert) {
		t.Helper()
		for src, dst := range map[string]string{l.CertPath: certPath, l.KeyPath: keyPath} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(first)
	echoO := startEcho(t)
	web := loopback(freePort(t))
	p := trLocal(t, ctx, "terminator", 1, map[string]string{
		"PQT_FORWARD": "web=tls://" + web, "PQT_TARGET": "web=" + echoO.addr(), "PQT_TLS_CERT": certPath, "PQT_TLS_KEY": keyPath,
	})
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cc := &tls.Config{RootCAs: pool, ServerName: "www.example.test", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	connect := func() *x509.Certificate {
		t.Helper()
		d := tls.Dialer{Config: cc}
		c, err := d.DialContext(within(t, ctx, 10*time.Second), "tcp", web)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		// The echo makes the client read, and so take the ticket.
		if _, err := tc.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(tc, buf); err != nil {
			t.Fatal(err)
		}
		return tc.ConnectionState().PeerCertificates[0]
	}
	if got := connect(); !bytes.Equal(got.Raw, first.Leaf.Raw) {
		t.Fatal("the first connection did not get the first certificate")
	}
	connect()
	lines := p.waitLogs(t, within(t, ctx, 10*time.Second), 2, msgIs("TLS connected", "tls", "terminate"))
	if lines[1].str("resumed") != "true" || lines[1].str("group") != "X25519MLKEM768" || lines[1].str("sig") != "resumed" {
		t.Errorf("second connection logged %v, want resumed=true with group X25519MLKEM768", lines[1])
	}

	if err := os.WriteFile(keyPath, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, within(t, ctx, 10*time.Second), msgIs("reload failed: keeping the certificates of tls:// routes in force"))
	cc.ClientSessionCache = nil // full handshakes from here
	if got := connect(); !bytes.Equal(got.Raw, first.Leaf.Raw) {
		t.Error("a failed reload replaced the certificate")
	}
	install(second)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, within(t, ctx, 10*time.Second), msgIs("reloaded certificates of tls:// routes"))
	if got := connect(); !bytes.Equal(got.Raw, second.Leaf.Raw) {
		t.Error("after SIGHUP the terminator still serves the old certificate")
	}
}

// TestTLSOriginateThroughTheTunnel: a listen side's tls:// target serves the
// tunnel's streams (the reverse-tunnel case with a TLS origin): the dial
// side's plain client reaches a crypto/tls server, verified and hybrid.
func TestTLSOriginateThroughTheTunnel(t *testing.T) {
	ctx := testContext(t, 90*time.Second)
	dir := t.TempDir()
	ca := testca.New(t, "api-ca").Save(t, dir)
	server := trServe(t, &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, testca.Leaf{DNS: []string{"api.example.test"}}).Save(t, dir, "api").Certificate}})
	p := startPair(t, ctx, pairOptions{
		transport: "tcp", target: "api=tls://" + server, routes: []string{"api"},
		listenEnv: map[string]string{"PQT_TLS_CA": ca.Path, "PQT_TLS_SERVER_NAME": "api=api.example.test"},
		dialEnv:   map[string]string{"PQT_CONNECTIONS": "1"},
	})
	got, err := trAsk(within(t, ctx, 15*time.Second), p.dial.forward["api"], "through\n")
	if err != nil || got != "tls:through\n" {
		t.Fatalf("got %q, %v; want the TLS server's answer", got, err)
	}
	l := p.listen.waitLog(t, within(t, ctx, 10*time.Second), msgIs("TLS connected", "tls", "originate", "route", "api"))
	if l.str("group") != "X25519MLKEM768" || l.str("sni") != "api.example.test" {
		t.Errorf("listen side logged %v, want group X25519MLKEM768 and sni api.example.test", l)
	}
}

// TestTLSTerminatorHandshakeBounds: with PQT_MAX_HANDSHAKES=1, of two
// clients that connect and never send a ClientHello one holds the slot
// and is cut off after PQT_HANDSHAKE_TIMEOUT (reason=timeout), and the other
// is reset at once (reason=busy); both are counted.
func TestTLSTerminatorHandshakeBounds(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	dir := t.TempDir()
	ca := testca.New(t, "web-ca").Save(t, dir)
	leaf := ca.Issue(t, testca.Leaf{DNS: []string{"www.example.test"}}).Save(t, dir, "web")
	web, met := loopback(freePort(t)), metAddr(t)
	p := trLocal(t, ctx, "terminator", 1, map[string]string{
		"PQT_FORWARD": "web=tls://" + web, "PQT_TARGET": "web=" + startEcho(t).addr(),
		"PQT_TLS_CERT": leaf.CertPath, "PQT_TLS_KEY": leaf.KeyPath, "PQT_METRICS": met,
		"PQT_HANDSHAKE_TIMEOUT": "1500ms", "PQT_MAX_HANDSHAKES": "1",
	})
	start := time.Now()
	ended := make(chan time.Duration, 2)
	for range 2 {
		c, err := dialClient(within(t, ctx, 5*time.Second), web)
		if errors.Is(err, syscall.ECONNRESET) {
			// The busy refusal's RST came before the dialler saw the
			// connection complete.
			ended <- time.Since(start)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := c.Read(make([]byte, 1))
			if err == nil {
				t.Error("a silent client read data")
			}
			ended <- time.Since(start)
		}()
	}
	first, second := <-ended, <-ended
	t.Logf("silent clients cut off after %s and %s", first.Round(time.Millisecond), second.Round(time.Millisecond))
	if first > time.Second {
		t.Errorf("the client beyond PQT_MAX_HANDSHAKES=1 was cut off after %s, want at once", first)
	}
	if second < 1400*time.Millisecond || second > 5*time.Second {
		t.Errorf("the client holding the handshake was cut off after %s, want about PQT_HANDSHAKE_TIMEOUT=1.5s", second)
	}
	p.waitLog(t, within(t, ctx, 5*time.Second), msgIs("TLS handshake refused", "reason", "timeout"))
	p.waitLog(t, within(t, ctx, 5*time.Second), msgIs("TLS handshake refused", "reason", "busy"))
	metAwait(t, ctx, "terminator", met, 10*time.Second, func(m metSet) error {
		if err := metExpect(m, false, 1, "pqtunnel_tls_refused_total", "route", "web", "side", "terminate", "reason", "timeout"); err != nil {
			return err
		}
		return metExpect(m, false, 1, "pqtunnel_tls_refused_total", "route", "web", "side", "terminate", "reason", "busy")
	})
}

// TestTLSTerminatorClientsPerIP gives a terminating route joined to a local
// echo PQT_MAX_CLIENTS_PER_IP=2: of three silent sockets from 127.0.0.1,
// two hold its bound during their handshakes and one (whichever the
// terminator took last) is cut off at once, while a client from 127.0.0.2
// completes its handshake and is served.
func TestTLSTerminatorClientsPerIP(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	dir := t.TempDir()
	ca := testca.New(t, "web-ca").Save(t, dir)
	leaf := ca.Issue(t, testca.Leaf{DNS: []string{"www.example.test"}}).Save(t, dir, "web")
	web := loopback(freePort(t))
	p := trLocal(t, ctx, "terminator", 1, map[string]string{
		"PQT_FORWARD": "web=tls://" + web, "PQT_TARGET": "web=" + startEcho(t).addr(),
		"PQT_TLS_CERT": leaf.CertPath, "PQT_TLS_KEY": leaf.KeyPath,
		"PQT_HANDSHAKE_TIMEOUT": "20s", "PQT_MAX_CLIENTS_PER_IP": "2",
	})
	start := time.Now()
	ended := make(chan time.Duration, 3)
	for range 3 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}}
		c, err := d.DialContext(within(t, ctx, 5*time.Second), "tcp", web)
		if errors.Is(err, syscall.ECONNRESET) {
			ended <- time.Since(start) // the refusal's RST came first
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Error("a silent client read data")
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				return // held its slot for the whole wait
			}
			ended <- time.Since(start)
		}()
	}
	select {
	case d := <-ended:
		if d > 2*time.Second {
			t.Errorf("the client past PQT_MAX_CLIENTS_PER_IP=2 was cut off after %s, want at once", d)
		}
	case <-time.After(6 * time.Second):
		t.Fatal("none of three silent clients from 127.0.0.1 was cut off")
	}
	select {
	case d := <-ended:
		t.Errorf("a second client from 127.0.0.1 was cut off after %s; two may hold the bound", d)
	case <-time.After(200 * time.Millisecond):
	}
	p.waitLog(t, within(t, ctx, 5*time.Second), msgIs("client refused", "reason", "PQT_MAX_CLIENTS_PER_IP reached"))

	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	d := tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}},
		Config: &tls.Config{RootCAs: roots, ServerName: "www.example.test"}}
	dctx := within(t, ctx, 10*time.Second)
	c, err := d.DialContext(dctx, "tcp", web)
	if err != nil {
		t.Fatalf("a client from 127.0.0.2 while 127.0.0.1 holds its bound: %v", err)
	}
	defer c.Close()
	if dl, ok := dctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Errorf("echo for the client from 127.0.0.2: %v", err)
	}
}

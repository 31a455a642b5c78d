package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// ppSeen is what the PROXY protocol origin read on one connection.
type ppSeen struct {
	header  *proxyproto.Header
	payload []byte
	err     error
}

// ppStartOrigin starts an origin that parses a PROXY protocol header with
// go-proxyproto, reads the payload up to EOF, reports both, and answers
// with the source address it was told followed by the payload.
func ppStartOrigin(t *testing.T) (*origin, <-chan ppSeen) {
	t.Helper()
	seen := make(chan ppSeen, 16)
	o := startOrigin(t, func(c *net.TCPConn) {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // bounds a failing test
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			seen <- ppSeen{err: fmt.Errorf("PROXY header: %w", err)}
			return
		}
		payload, err := io.ReadAll(br)
		seen <- ppSeen{header: h, payload: payload, err: err}
		if err != nil {
			return
		}
		if _, err := c.Write(append([]byte(h.SourceAddr.String()+"\n"), payload...)); err == nil {
			_ = c.CloseWrite() // a failure shows as a short answer
		}
	})
	return o, seen
}

// ppNginx runs nginx on a free loopback port, accepting the PROXY protocol
// and answering every request with the client address the header named.
// It returns the address nginx listens on.
func ppNginx(t *testing.T, ctx context.Context) string {
	t.Helper()
	return startNginx(t, ctx, t.TempDir(), " proxy_protocol", `location / {
			default_type text/plain;
			return 200 "$proxy_protocol_addr:$proxy_protocol_port\n";
		}`)
}

// TestProxyProtocol runs a listen side with PQT_PROXY_PROTOCOL=v1 and v2
// and dial sides over each transport: an origin that parses the header
// with go-proxyproto learns the client's own address and then receives the
// payload byte-exact, and nginx with 'listen ... proxy_protocol' reports the
// client's address in an HTTP answer.
func TestProxyProtocol(t *testing.T) {
	ctx := testContext(t, 90*time.Second)
	nginx := ppNginx(t, ctx)
	for _, version := range []string{"v1", "v2"} {
		t.Run(version, func(t *testing.T) {
			o, seen := ppStartOrigin(t)
			l := startListen(t, ctx, 0, "auto", map[string]string{
				"PQT_TARGET":         "raw=" + o.addr() + ",nginx=" + nginx,
				"PQT_PROXY_PROTOCOL": version,
			})
			transports(t, func(t *testing.T, transport string) {
				d := startDial(t, ctx, l.tunnelAddr, transport, []string{"raw", "nginx"}, map[string]string{"PQT_CONNECTIONS": "1"})
				d.waitLog(t, within(t, ctx, 20*time.Second), msgIs("tunnel connected", "transport", transport, "group", "X25519MLKEM768"))

				t.Run("go-proxyproto", func(t *testing.T) {
					ctx := within(t, ctx, 20*time.Second)
					payload := randomBytes(31, 300<<10)
					c, err := dialClient(ctx, d.forward["raw"])
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					client := c.LocalAddr().String()
					if _, err := c.Write(payload); err != nil {
						t.Fatalf("write: %v", err)
					}
					if err := c.CloseWrite(); err != nil {
						t.Fatal(err)
					}
					var s ppSeen
					select {
					case s = <-seen:
					case <-ctx.Done():
						t.Fatal("origin saw no connection")
					}
					if s.err != nil {
						t.Fatalf("origin: %v", s.err)
					}
					wantVersion := map[string]byte{"v1": 1, "v2": 2}[version]
					if s.header.Version != wantVersion || s.header.Command != proxyproto.PROXY || s.header.TransportProtocol != proxyproto.TCPv4 {
						t.Errorf("header version %d command %v protocol %v, want version %d PROXY TCPv4", s.header.Version, s.header.Command, s.header.TransportProtocol, wantVersion)
					}
					if got := s.header.SourceAddr.String(); got != client {
						t.Errorf("PROXY header source %s, want the client's address %s", got, client)
					}
					if got, want := s.header.DestinationAddr.String(), c.RemoteAddr().String(); got != want {
						t.Errorf("PROXY header destination %s, want the address the client connected to, %s", got, want)
					}
					t.Logf("PROXY %s header: source %s destination %s", version, s.header.SourceAddr, s.header.DestinationAddr)
					if err := sameBytes(s.payload, payload); err != nil {
						t.Errorf("payload after the header: %v", err)
					}
					answer, err := io.ReadAll(c)
					if err != nil {
						t.Fatalf("read answer: %v", err)
					}
					if err := sameBytes(answer, append([]byte(client+"\n"), payload...)); err != nil {
						t.Errorf("answer through the tunnel: %v", err)
					}
				})

				t.Run("nginx", func(t *testing.T) {
					ctx := within(t, ctx, 20*time.Second)
					var client string
					tr := &http.Transport{
						DisableKeepAlives: true,
						DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
							c, err := dialClient(ctx, addr)
							if err != nil {
								return nil, err
							}
							client = c.LocalAddr().String()
							return c, nil
						},
					}
					defer tr.CloseIdleConnections()
					req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.forward["nginx"]+"/", nil)
					if err != nil {
						t.Fatal(err)
					}
					resp, err := (&http.Client{Transport: tr}).Do(req)
					if err != nil {
						t.Fatalf("GET through the tunnel to nginx: %v", err)
					}
					defer resp.Body.Close()
					body, err := io.ReadAll(resp.Body)
					if err != nil {
						t.Fatal(err)
					}
					if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != client {
						t.Errorf("nginx answered %d %q, want 200 and the client's address %s", resp.StatusCode, body, client)
					}
				})
			})
			if n := o.acceptCount(); n != 2 {
				t.Errorf("origin accepted %d connections, want 2 (one per transport)", n)
			}
		})
	}
}

// TestProxyProtocolBadValue checks that an unknown PQT_PROXY_PROTOCOL stops
// the start with an error naming the variable.
func TestProxyProtocolBadValue(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	for _, v := range []string{"v3", "yes"} {
		t.Run(v, func(t *testing.T) {
			env := sideEnv("listen", "tcp", identityNamed(t, "listen"), identityNamed(t, "dial"), map[string]string{
				"PQT_TUNNEL":         loopback(freePort(t)),
				"PQT_TARGET":         loopback(freePort(t)),
				"PQT_PROXY_PROTOCOL": v,
			})
			p := startProc(t, ctx, "pqtunnel", env, pqtunnelBin)
			if code := p.wait(t, within(t, ctx, 10*time.Second)); code == 0 {
				t.Fatal("exit code 0, want non-zero")
			}
			out := p.stderr.String()
			if !strings.Contains(out, "PQT_PROXY_PROTOCOL:") || !strings.Contains(out, v) {
				t.Errorf("stderr does not name PQT_PROXY_PROTOCOL and %q:\n%s", v, out)
			}
			if strings.Contains(out, "tunnel listening") {
				t.Errorf("started listening despite the bad setting:\n%s", out)
			}
		})
	}
}

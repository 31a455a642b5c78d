package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// startNginx runs nginx in the foreground with its files in dir, serving
// one server block on a free loopback port: listenOpts follows the address
// in its listen directive (" proxy_protocol"), body is the rest of the
// block. It returns the address once nginx accepts connections there.
func startNginx(t *testing.T, ctx context.Context, dir, listenOpts, body string) string {
	t.Helper()
	bin := needTool(t, "nginx", "nginx-light")
	port := freePort(t)
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen 127.0.0.1:%[2]d%[3]s;
		%[4]s
	}
}
`, dir, port, listenOpts, body)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, ctx, "nginx", nil, bin, "-e", "stderr", "-p", dir, "-c", path)
	addr := loopback(port)
	var d net.Dialer
	ok := metPoll(within(t, ctx, 10*time.Second), 50*time.Millisecond, func() bool {
		if p.exited() {
			return true
		}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		_ = c.Close() // only probing
		return true
	})
	if !ok || p.exited() {
		t.Fatalf("nginx did not start listening on %s:\n%s", addr, p.stderr.String())
	}
	return addr
}

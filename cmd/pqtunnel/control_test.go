//go:build unix

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/config"
)

// statusHandler serves sampleStatus at /status.json.
func statusHandler(t *testing.T) http.Handler {
	body, err := json.Marshal(sampleStatus())
	if err != nil {
		t.Fatal(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status.json" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(body)
	})
}

// 'pqtunnel status' with no PQT_METRICS asks the control socket that the
// same environment names, and the socket is the owner's alone.
func TestStatusOverControlSocket(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"PQT_MODE": "listen", "PQT_TUNNEL": ":8443", "PQT_TARGET": "127.0.0.1:1", "XDG_RUNTIME_DIR": dir}
	ctl := config.ControlOf(env)
	stop, err := serveControl(ctl, statusHandler(t), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(ctl.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode %04o, want 0600", fi.Mode().Perm())
	}
	if di, err := os.Stat(filepath.Dir(ctl.Path)); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("control socket directory: %v, %v; want mode 0700", di, err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"status"}, env, &out, &errOut); code != 0 || !strings.Contains(out.String(), "pqt1_abc") {
		t.Errorf("status over the control socket: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	// A second side with the same environment does not take it over.
	if _, err := listenControl(ctl); !errors.Is(err, errControlInUse) {
		t.Errorf("a second listen on a live control socket: %v, want errControlInUse", err)
	}
	stop()
	if _, err := os.Lstat(ctl.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the control socket is still there after stop: %v", err)
	}
	out.Reset()
	errOut.Reset()
	if code := run([]string{"status"}, env, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "control socket") || !strings.Contains(errOut.String(), "PQT_METRICS") {
		t.Errorf("status with nothing running: exit %d, stderr %q; want 1 naming the control socket and PQT_METRICS", code, errOut.String())
	}
}

// A socket left by a process that died is replaced.
func TestControlSocketReplacesAStaleOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = ln.Close() // leaves the socket file, as a killed process does
	ln2, err := listenControl(config.Control{Path: path})
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	_ = ln2.Close()
}

// In a directory others may write, the default socket is not served.
func TestControlSocketRefusesASharedDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	if _, err := listenControl(config.Control{Path: filepath.Join(dir, "x.sock"), Auto: true}); err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Errorf("listen in a world-writable directory: %v, want a refusal", err)
	}
}

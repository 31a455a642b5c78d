//go:build unix

package proxy

import (
	"bufio"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/pqtunnel/pqtunnel/internal/defaults"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// unixHalfCloseOrigin listens on a Unix socket at path. Each connection
// starts with a PROXY header, which it sends on headers; it then echoes
// until the client's FIN and only after that writes "|eof" and its own
// FIN, so a client reads "|eof" only if its half-close got through and
// the return direction stayed open.
func unixHalfCloseOrigin(t *testing.T, path string) <-chan *proxyproto.Header {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	headers := make(chan *proxyproto.Header, 16)
	testutil.Serve(t, ln, func(c net.Conn) {
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			t.Errorf("origin: read PROXY header: %v", err)
			return
		}
		headers <- h
		if _, err := io.Copy(c, br); err != nil {
			t.Errorf("origin: echo: %v", err)
			return
		}
		if _, err := io.WriteString(c, "|eof"); err == nil {
			_ = c.(*net.UnixConn).CloseWrite()
		}
	})
	return headers
}

// halfCloseRoundTrip writes payload to c, half-closes, and requires the
// payload back followed by "|eof" and EOF.
func halfCloseRoundTrip(t *testing.T, c sockConn, payload []byte) {
	t.Helper()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(payload); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("half-close: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after half-close: %v", err)
	}
	if want := string(payload) + "|eof"; string(got) != want {
		t.Fatalf("got %d bytes back, want %d: the payload byte-exact, then |eof", len(got), len(want))
	}
}

// A client of a unix:// forward route reaches a unix:// target through the
// tunnel with half-close in both directions and arrives as PROXY LOCAL; a
// TCP client of the same target arrives with its own address; a refused
// stream closes a Unix client promptly.
func TestEngineUnixForwardAndTarget(t *testing.T) {
	dir := t.TempDir()
	originPath := filepath.Join(dir, "origin.sock")
	headers := unixHalfCloseOrigin(t, originPath)
	listenStore, dialStore := pinned.Stores(t, wire.ALPN)
	tr := memtransport.New()
	listen := runEngine(t, Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: tr, ProxyProtocol: 2,
		Target: []Route{{Name: "viaunix", Scheme: SchemeUnix, Addr: originPath}, {Name: "viatcp", Scheme: SchemeUnix, Addr: originPath},
			{Name: "gone", Scheme: SchemeUnix, Addr: filepath.Join(dir, "nothing.sock")}},
		TLS: listenStore,
	})
	fwdPath := filepath.Join(dir, "fwd.sock")
	dial := runEngine(t, Config{
		Mode: ModeDial, Tunnel: []string{listen.TunnelAddr().String()}, Transport: tr, Connections: 1,
		Forward: []Route{{Name: "viaunix", Scheme: SchemeUnix, Addr: fwdPath}, {Name: "viatcp", Addr: "127.0.0.1:0"},
			{Name: "gone", Scheme: SchemeUnix, Addr: filepath.Join(dir, "gone.sock")}},
		TLS: dialStore,
	})
	waitTunnels(t, dial)
	fi, err := os.Lstat(fwdPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != defaults.UnixSocketMode {
		t.Errorf("forward socket is %s, want a socket with mode %o", fi.Mode(), defaults.UnixSocketMode)
	}

	t.Run("unix client", func(t *testing.T) {
		c, err := net.Dial("unix", fwdPath)
		if err != nil {
			t.Fatal(err)
		}
		halfCloseRoundTrip(t, c.(*net.UnixConn), testutil.RandomBytes(t, 300<<10))
		h := <-headers
		if h.Command != proxyproto.LOCAL {
			t.Errorf("PROXY header for a Unix client: command %v, want LOCAL", h.Command)
		}
	})
	t.Run("refused stream closes the unix client", func(t *testing.T) {
		c, err := net.Dial("unix", filepath.Join(dir, "gone.sock"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		n, err := c.Read(make([]byte, 1))
		if n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("read from a client whose target is missing: %d, %v; want EOF (a Unix socket has no reset)", n, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("closed after %s, want promptly", d)
		}
	})
	t.Run("tcp client", func(t *testing.T) {
		c, err := net.Dial("tcp", dial.ForwardAddrs()[1].String())
		if err != nil {
			t.Fatal(err)
		}
		local := c.LocalAddr().String()
		halfCloseRoundTrip(t, c.(*net.TCPConn), []byte("hello"))
		h := <-headers
		if h.Command != proxyproto.PROXY || h.TransportProtocol != proxyproto.TCPv4 || h.SourceAddr.String() != local {
			t.Errorf("PROXY header for a TCP client: %v %v from %v, want PROXY TCPv4 from %s", h.Command, h.TransportProtocol, h.SourceAddr, local)
		}
	})
}

func TestListenUnixSocketFile(t *testing.T) {
	dir := t.TempDir()
	t.Run("stale socket replaced with mode and group, removed on close", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		old.SetUnlinkOnClose(false) // as a killed process leaves it
		_ = old.Close()
		gid := os.Getgid()
		ln, err := listenUnix(path, 0o640, strconv.Itoa(gid))
		if err != nil {
			t.Fatalf("listen over a stale socket: %v", err)
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("socket mode %v (%v), want 0640", fi.Mode(), err)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Gid) != gid {
			t.Errorf("socket group %v, want %d", fi.Sys(), gid)
		}
		_ = ln.Close()
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket file left after close: %v", err)
		}
	})
	t.Run("socket in use", func(t *testing.T) {
		path := filepath.Join(dir, "busy.sock")
		busy, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		if ln, err := listenUnix(path, 0o660, ""); !errors.Is(err, ErrSocketInUse) {
			if ln != nil {
				_ = ln.Close()
			}
			t.Fatalf("listen on a socket in use: %v, want ErrSocketInUse", err)
		}
	})
	t.Run("other file kept", func(t *testing.T) {
		path := filepath.Join(dir, "data")
		if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		if ln, err := listenUnix(path, 0o660, ""); err == nil {
			_ = ln.Close()
			t.Fatal("listen over a regular file succeeded")
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
			t.Errorf("regular file changed: %q, %v", b, err)
		}
	})
	t.Run("engine removes its socket", func(t *testing.T) {
		path := filepath.Join(dir, "engine.sock")
		_, dialStore := pinned.Stores(t, wire.ALPN)
		e, err := New(Config{Mode: ModeDial, Tunnel: []string{"127.0.0.1:1"}, Transport: memtransport.New(),
			Forward: []Route{{Scheme: SchemeUnix, Addr: path}}, TLS: dialStore})
		if err != nil {
			t.Fatal(err)
		}
		if got := e.ForwardAddrs()[0].String(); got != path {
			t.Errorf("forward address %q, want %q", got, path)
		}
		e.Close()
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket file left after Close: %v", err)
		}
	})
}

//go:build !windows

package examples_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// modeRefusal is the start-up error for a key file that other users can
// read, as examples/systemd/README.md and the stunnel migration guide quote
// it (for a file of mode 0440 not owned by root).
const modeRefusal = "has mode 0440: other users can read or change the private key (fix: chmod 600 "

// TestSecretVolumeIdentity runs a listen side as the image's user (uid and
// gid 65532) on an identity laid out as the kubelet presents a Secret volume
// with defaultMode 0400 and fsGroup 65532: a symlink into a timestamped
// directory, the file owned by root, group 65532, mode 0440. It must start,
// as examples/kubernetes/README.md says; the same file owned by 65532
// instead is refused with the text the docs quote.
func TestSecretVolumeIdentity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a root-owned file and run pqtunnel as uid 65532")
	}
	dir, err := os.MkdirTemp("", "pqtunnel-secret-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Traversable and runnable by uid 65532, as a container image is.
	bin := filepath.Join(dir, "pqtunnel")
	copyFile(t, pqtunnelBin, bin, 0o755)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	vol := filepath.Join(dir, "etc-pqtunnel")
	data := filepath.Join(vol, "..2026_01_01_00_00_00.000000000")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	identity := filepath.Join(data, "identity")
	out, err := exec.Command(pqtunnelBin, "keygen", "-o", identity).CombinedOutput()
	if err != nil {
		t.Fatalf("pqtunnel keygen: %v\n%s", err, out)
	}
	peerPin, err := exec.Command(pqtunnelBin, "keygen", "-o", filepath.Join(dir, "peer.id")).Output()
	if err != nil {
		t.Fatalf("pqtunnel keygen: %v", err)
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(vol, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/identity", filepath.Join(vol, "identity")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(identity, 0, imageUID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(identity, 0o440); err != nil {
		t.Fatal(err)
	}

	port := freePorts(t, 2)
	env := []string{
		"PQT_MODE=listen",
		"PQT_TUNNEL=127.0.0.1:" + strconv.Itoa(port[0]),
		"PQT_TARGET=127.0.0.1:6379",
		"PQT_IDENTITY=" + filepath.Join(vol, "identity"),
		"PQT_PEERS=" + strings.TrimSpace(string(peerPin)),
		"PQT_METRICS=127.0.0.1:" + strconv.Itoa(port[1]),
		"PQT_DRAIN_TIMEOUT=1s",
	}
	cred := &syscall.Credential{Uid: imageUID, Gid: imageUID, Groups: []uint32{imageUID}}

	t.Run("root-owned 0440 is accepted", func(t *testing.T) {
		p := startProcess(t, env, cred, bin)
		waitHTTP(t, p, "http://127.0.0.1:"+strconv.Itoa(port[1])+"/readyz")
	})

	t.Run("0440 owned by another user is refused", func(t *testing.T) {
		if err := os.Chown(identity, imageUID, imageUID); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin)
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("pqtunnel on a 0440 identity owned by uid %d: %v, want a start-up error\n%s", imageUID, err, out)
		}
		path := filepath.Join(vol, "identity")
		if want := "pqtunnel: PQT_IDENTITY: key file " + path + " " + modeRefusal + path + ")"; !strings.Contains(string(out), want) {
			t.Errorf("the refusal does not read %q:\n%s", want, out)
		}
	})

	for _, doc := range []string{"systemd/README.md", "stunnel-migration/README.md"} {
		if !strings.Contains(strings.Join(strings.Fields(readFile(t, doc)), " "), modeRefusal) {
			t.Errorf("%s does not quote the refusal %q", doc, modeRefusal)
		}
	}
}

// process is a pqtunnel started by startProcess; it is stopped at cleanup.
type process struct {
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
}

// startProcess starts bin with args and exactly env (and PATH), as cred
// when it is not nil. At cleanup it sends SIGTERM, waits up to 10 s, then
// kills; a failed test logs the output.
func startProcess(t *testing.T, env []string, cred *syscall.Credential, bin string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(bin, args...), out: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if cred != nil {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait() // the exit is seen through exited; the status is not needed
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM) // it may have exited already
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not stop within 10 s of SIGTERM", bin)
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", bin, p.out.String())
		}
	})
	return p
}

// waitHTTP waits up to 15 s for url to answer 200, failing the test at once
// if p exits first.
func waitHTTP(t *testing.T, p *process, url string) {
	t.Helper()
	client := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("pqtunnel exited before %s answered 200:\n%s", url, p.out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 within 15 s (last error %v)", url, err)
		}
	}
}

// freePorts returns n distinct 127.0.0.1 ports free on both TCP and UDP
// (a listen side uses one port number for QUIC and TLS/TCP).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = testutil.Port(t)
	}
	return ports
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// lockedBuffer is a bytes.Buffer that a process writes while the test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

package integration

import (
	"crypto/mldsa"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/tlswire"
)

// tapRelay forwards TCP connections from a loopback port to target and
// records the first connection's bytes in each direction.
type tapRelay struct {
	ln       net.Listener
	target   string
	mu       sync.Mutex
	up, down []byte // client to server, server to client
	taken    bool
	wg       sync.WaitGroup
}

func startTapRelay(t *testing.T, target string) *tapRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &tapRelay{ln: ln, target: target}
	r.wg.Add(1)
	go r.routineAccept()
	t.Cleanup(func() {
		_ = ln.Close()
		r.wg.Wait()
	})
	return r
}

func (r *tapRelay) routineAccept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", r.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		r.mu.Lock()
		record := !r.taken
		r.taken = true
		r.mu.Unlock()
		// Bounded: the test ends every process, which closes both ends.
		deadline := time.Now().Add(30 * time.Second)
		_ = c.SetDeadline(deadline)
		_ = s.SetDeadline(deadline)
		r.wg.Add(2)
		go r.routineCopy(s, c, record, &r.up)
		go r.routineCopy(c, s, record, &r.down)
	}
}

func (r *tapRelay) routineCopy(dst, src net.Conn, record bool, into *[]byte) {
	defer r.wg.Done()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if record {
				r.mu.Lock()
				if len(*into) < 1<<20 {
					*into = append(*into, buf[:n]...)
				}
				r.mu.Unlock()
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				_ = src.Close()
			}
			return
		}
	}
}

func (r *tapRelay) captured() (up, down []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.up...), append([]byte(nil), r.down...)
}

// TestKeyLogShowsMLDSA65CertificateVerify runs a TCP tunnel through a
// recording relay with PQT_KEYLOG on the dial side, decrypts the captured
// handshake with the key log, and finds ML-DSA-65 (0x0905) in both sides'
// CertificateVerify; the dial side warns at start and for the tunnel.
func TestKeyLogShowsMLDSA65CertificateVerify(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	o := startEcho(t)
	l := startListen(t, ctx, 0, "tcp", map[string]string{"PQT_TARGET": o.addr()})
	relay := startTapRelay(t, l.tunnelAddr)
	keylog := filepath.Join(t.TempDir(), "keys")
	d := startDial(t, ctx, relay.ln.Addr().String(), "tcp", nil, map[string]string{"PQT_CONNECTIONS": "1", "PQT_KEYLOG": keylog})
	d.waitLog(t, within(t, ctx, 5*time.Second), msgIs("PQT_KEYLOG is on: TLS secrets of every tunnel are written to the key log, and anyone who reads it can decrypt the traffic", "keylog", keylog))
	d.waitLog(t, within(t, ctx, 20*time.Second), msgIs("tunnel connected", "transport", "tcp", "sig", "ML-DSA-65"))
	d.waitLog(t, within(t, ctx, 5*time.Second), msgIs("tunnel secrets written to the key log: anyone who reads it can decrypt this tunnel", "keylog", keylog))
	if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(71, 4096)); err != nil {
		t.Fatal(err)
	}

	st, err := os.Stat(keylog)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key log: %v, mode %v; want mode 0600", err, st.Mode().Perm())
	}
	keys, err := os.ReadFile(keylog)
	if err != nil {
		t.Fatal(err)
	}
	up, down := relay.captured()
	verifies, err := tlswire.CertificateVerifySchemes(string(keys), up, down)
	if errors.Is(err, tlswire.ErrUnsupportedSuite) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatalf("decrypt the captured handshake: %v", err)
	}
	for _, side := range []string{"client", "server"} {
		v, ok := verifies[side]
		if !ok {
			t.Errorf("no %s CertificateVerify in the decrypted capture", side)
			continue
		}
		if v.Scheme != tls.MLDSA65 || v.SignatureLen != mldsa.MLDSA65SignatureSize {
			t.Errorf("%s CertificateVerify on the wire: scheme %#04x with %d signature bytes, want 0x0905 (ML-DSA-65) with %d", side, uint16(v.Scheme), v.SignatureLen, mldsa.MLDSA65SignatureSize)
		}
	}
}

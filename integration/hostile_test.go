package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
	"github.com/pqtunnel/pqtunnel/wire"
)

// hosPacedEcho sends payload through addr to an echo origin at a limited
// rate, so that the transfer lasts about d, and checks that exactly payload
// comes back. It closes started once the first MiB has come back.
func hosPacedEcho(ctx context.Context, addr string, payload []byte, d time.Duration, started chan<- struct{}) error {
	const chunk = 64 << 10
	c, err := dialClient(ctx, addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	werr := make(chan error, 1)
	go func() {
		tick := time.NewTicker(d / time.Duration(len(payload)/chunk))
		defer tick.Stop()
		for off := 0; off < len(payload); off += chunk {
			select {
			case <-tick.C:
			case <-ctx.Done():
				werr <- ctx.Err()
				return
			}
			if _, err := c.Write(payload[off:min(off+chunk, len(payload))]); err != nil {
				werr <- err
				return
			}
		}
		werr <- c.CloseWrite()
	}()
	got := make([]byte, 0, len(payload))
	buf := make([]byte, 64<<10)
	var rerr error
	for {
		n, err := c.Read(buf)
		if len(got) < 1<<20 && len(got)+n >= 1<<20 {
			close(started)
		}
		got = append(got, buf[:n]...)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				rerr = err
			}
			break
		}
	}
	if rerr != nil {
		_ = c.Close() // unblocks the writer
		<-werr
		return fmt.Errorf("read after %d of %d bytes: %w", len(got), len(payload), rerr)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return sameBytes(got, payload)
}

// hosRSS returns the resident set size of process pid in bytes.
func hosRSS(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// hosCut is what happened to one hostile TCP connection.
type hosCut struct {
	kind  string
	local string        // our address, which the listen side logs as remote
	after time.Duration // from connecting until the listen side closed it
	err   error         // set if it was not closed in time
}

// hosHold connects to addr, sends first (if any), then sends one byte of
// trickle every interval (if trickle is not empty), and waits for the peer
// to close the connection: it reports how long that took from connecting.
// It closes connected (if not nil) once the dial is done.
func hosHold(ctx context.Context, kind, addr string, first, trickle []byte, interval, limit time.Duration, connected chan<- struct{}) hosCut {
	r := hosCut{kind: kind}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if connected != nil {
		close(connected)
	}
	if err != nil {
		r.err = fmt.Errorf("dial: %w", err)
		return r
	}
	c := conn.(*net.TCPConn)
	defer c.Close()
	start := time.Now()
	r.local = c.LocalAddr().String()
	_ = c.SetDeadline(start.Add(limit)) // a connection left open shows as a timeout
	if len(first) > 0 {
		if _, err := c.Write(first); err != nil && !hosClosedErr(err) {
			r.err = fmt.Errorf("write: %w", err)
			return r
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if len(trickle) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for _, b := range trickle {
				select {
				case <-tick.C:
				case <-stop:
					return
				}
				if _, err := c.Write([]byte{b}); err != nil {
					return // closed by the peer: the reader sees it too
				}
			}
		}()
	}
	_, err = io.Copy(io.Discard, c)
	r.after = time.Since(start)
	close(stop)
	wg.Wait()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		r.err = fmt.Errorf("still open after %s", limit)
	}
	return r
}

// hosClosedErr reports an error that means the peer closed or reset.
func hosClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset by peer") || strings.Contains(err.Error(), "broken pipe")
}

// hosFakeInitial returns a 1200-byte datagram that starts like a QUIC v1
// Initial packet (long header, version 1, connection IDs) with random rest.
func hosFakeInitial(r *rand.Rand) []byte {
	b := make([]byte, 1200)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	b[0] = 0xC3
	copy(b[1:5], []byte{0, 0, 0, 1})
	b[5] = 8 // destination connection ID length
	b[14] = 8
	return b
}

// TestHostilePeers attacks a listen side's tunnel port (TCP and UDP) with
// garbage, truncated and oversized TLS records, random and fake QUIC
// datagrams, silent, trickling and stalling peers, while a paced transfer
// runs over an established QUIC tunnel and another over an established TCP
// tunnel: unauthenticated peers reach nothing, silent and slow ones are cut
// off at PQT_HANDSHAKE_TIMEOUT, the transfers complete byte-exact, and the
// listen side's goroutines and memory come back down.
func TestHostilePeers(t *testing.T) {
	const (
		garbageConns  = 200
		blobs         = 50
		udpGarbage    = 100
		udpInitials   = 20
		transferSize  = 16 << 20
		transferTime  = 4 * time.Second
		handshakeTime = 2 * time.Second
		cutLimit      = handshakeTime + time.Second
	)
	ctx := testContext(t, 100*time.Second)
	o := startEcho(t)
	lm := metAddr(t)
	l := startListen(t, ctx, 0, "auto", map[string]string{
		"PQT_TARGET":            o.addr(),
		"PQT_HANDSHAKE_TIMEOUT": handshakeTime.String(),
		"PQT_METRICS":           lm,
		// Each failure's own line: past the first per source and reason
		// they are logged at DEBUG only.
		"PQT_LOG_LEVEL": "debug",
	})
	var dials []*side
	for _, tr := range []string{"quic", "tcp"} {
		d := startDial(t, ctx, l.tunnelAddr, tr, nil, map[string]string{"PQT_CONNECTIONS": "1"})
		d.waitLog(t, within(t, ctx, 20*time.Second), msgIs("tunnel connected", "transport", tr, "group", "X25519MLKEM768"))
		dials = append(dials, d)
	}
	l.waitLogs(t, within(t, ctx, 10*time.Second), 2, msgIs("tunnel connected"))
	pid := l.cmd.Process.Pid
	baseG := metGoroutines(t, ctx, "listen side", lm)
	before := metAwait(t, ctx, "listen side", lm, 5*time.Second, func(metSet) error { return nil })
	failuresBefore, _ := before.value("pqtunnel_handshake_failures_total")

	// The transfers, one per tunnel transport.
	tctx := within(t, ctx, 60*time.Second)
	transferErr := make(chan error, len(dials))
	var startedAll []chan struct{}
	for i, d := range dials {
		started := make(chan struct{})
		startedAll = append(startedAll, started)
		go func() {
			transferErr <- hosPacedEcho(tctx, d.forward[""], randomBytes(uint64(40+i), transferSize), transferTime, started)
		}()
	}
	for i, started := range startedAll {
		select {
		case <-started:
		case err := <-transferErr:
			t.Fatalf("transfer ended before 1 MiB came back: %v", err)
		case <-tctx.Done():
			t.Fatalf("transfer %d: no 1 MiB echoed", i)
		}
	}
	rssBefore := hosRSS(t, pid)
	preAttackG := metGoroutines(t, ctx, "listen side", lm)

	// The attack. The silent and slow peers come first, so that they hold
	// handshake slots and measure the timeout rather than a busy refusal.
	attackStart := time.Now()
	actx := within(t, ctx, 30*time.Second)
	rng := rand.New(rand.NewChaCha8([32]byte{7}))
	var mu sync.Mutex
	var cuts []hosCut
	var wg sync.WaitGroup
	hold := func(kind string, first, trickle []byte, interval time.Duration, connected chan<- struct{}) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := hosHold(actx, kind, l.tunnelAddr, first, trickle, interval, cutLimit+2*time.Second, connected)
			mu.Lock()
			cuts = append(cuts, r)
			mu.Unlock()
		}()
	}
	slowBytes := append([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}, randomBytes(50, 64)...)
	// Both are connected, so first in the listen side's accept queue, before
	// the flood starts.
	for _, k := range []string{"silent", "slow"} {
		connected := make(chan struct{})
		trickle := []byte(nil)
		if k == "slow" {
			trickle = slowBytes
		}
		hold(k, nil, trickle, 200*time.Millisecond, connected)
		<-connected
	}

	// A QUIC peer that starts a real handshake (hybrid group, our ALPN) and
	// stalls when asked for its certificate: its connection's goroutine blocks
	// in GetClientCertificate until released, so it sends nothing more.
	release := make(chan struct{})
	stalled := make(chan struct{})
	stallDone := make(chan error, 1)
	var stallOnce sync.Once
	go func() {
		conf := &tls.Config{
			MinVersion:         tls.VersionTLS13,
			CurvePreferences:   []tls.CurveID{tls.X25519MLKEM768},
			InsecureSkipVerify: true, // the peer is not what is tested
			NextProtos:         []string{wire.ALPN},
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				stallOnce.Do(func() { close(stalled) })
				<-release
				return nil, errors.New("released")
			},
		}
		conn, err := quic.DialAddr(ctx, l.tunnelAddr, conf, &quic.Config{HandshakeIdleTimeout: 30 * time.Second})
		if err == nil {
			_ = conn.CloseWithError(0, "") // it should not exist
			err = errors.New("handshake completed")
		}
		stallDone <- err
	}()
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})

	// A QUIC peer with a valid identity that completes TLS but never sends
	// its session proof: the listen side must close it at the timeout.
	store := dialStore(t)
	noProof := make(chan hosCut, 1)
	go func() {
		r := hosCut{kind: "quic no proof"}
		defer func() { noProof <- r }()
		start := time.Now()
		conn, err := quic.DialAddr(actx, l.tunnelAddr, store.ClientConfig(), &quic.Config{HandshakeIdleTimeout: 5 * time.Second, MaxIdleTimeout: 30 * time.Second})
		if err != nil {
			r.err = fmt.Errorf("TLS handshake with a valid identity: %w", err)
			return
		}
		r.local = conn.LocalAddr().String()
		select {
		case <-conn.Context().Done():
			r.after = time.Since(start)
		case <-time.After(cutLimit + 2*time.Second):
			r.err = errors.New("still open")
			_ = conn.CloseWithError(0, "")
		}
	}()

	// 50 TLS-record-like blobs: half with the largest length and less data,
	// half a plausible ClientHello length and less data, one 16 KiB+ of junk.
	var blobsConnected []chan struct{}
	for i := range blobs {
		var b []byte
		kind := "blob-64k"
		switch {
		case i == 0:
			kind = "blob-junk"
			b = append([]byte{0x16, 0x03, 0x01, 0xff, 0xff}, randomBytes(2000, 20<<10)...)
		case i%2 == 0:
			b = append([]byte{0x16, 0x03, 0x01, 0xff, 0xff}, randomBytes(uint64(2000+i), 1+rng.IntN(2000))...)
		default:
			kind = "blob-short"
			b = append([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc}, randomBytes(uint64(2000+i), 1+rng.IntN(400))...)
		}
		connected := make(chan struct{})
		hold(kind, b, nil, 0, connected)
		blobsConnected = append(blobsConnected, connected)
	}
	// The blobs fit in the 64 handshake slots, so the listen side parses
	// them; the flood after them finds the slots mostly taken.
	for _, c := range blobsConnected {
		<-c
	}
	// 200 TCP connections sending random bytes.
	for i := range garbageConns {
		hold("garbage", randomBytes(uint64(1000+i), 1+rng.IntN(4096)), nil, 0, nil)
	}
	// UDP: random datagrams of 1..1500 bytes, and fake QUIC Initials.
	udpReplies := 0
	func() {
		uc, err := net.Dial("udp", l.tunnelAddr)
		if err != nil {
			t.Fatalf("udp: %v", err)
		}
		defer uc.Close()
		for i := range udpGarbage {
			if _, err := uc.Write(randomBytes(uint64(3000+i), 1+rng.IntN(1500))); err != nil {
				t.Errorf("udp write: %v", err)
			}
		}
		for range udpInitials {
			if _, err := uc.Write(hosFakeInitial(rng)); err != nil {
				t.Errorf("udp write: %v", err)
			}
		}
		// Count what comes back (version negotiation at most) for a moment.
		buf := make([]byte, 2048)
		_ = uc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			if _, err := uc.Read(buf); err != nil {
				break
			}
			udpReplies++
		}
	}()

	select {
	case <-stalled:
	case err := <-stallDone:
		t.Fatalf("stalling QUIC peer: %v before it was asked for a certificate", err)
	case <-within(t, ctx, 10*time.Second).Done():
		t.Fatal("stalling QUIC peer was never asked for its certificate")
	}
	wg.Wait()
	np := <-noProof
	attackTime := time.Since(attackStart)

	// What happened to each kind of TCP peer, and how long it lasted.
	byKind := map[string][]hosCut{}
	for _, c := range cuts {
		byKind[c.kind] = append(byKind[c.kind], c)
	}
	// What the listen side may do with each kind: a record length over the
	// TLS maximum is refused at once; a plausible one with the rest missing
	// waits for the timeout; random bytes fail to parse (or, starting with
	// 0x16, wait); any of them may find the handshake slots full (busy).
	kinds := []string{"silent", "slow", "blob-64k", "blob-junk", "blob-short", "garbage"}
	allowed := map[string][]string{
		"silent":     {"timeout"},
		"slow":       {"timeout"},
		"blob-64k":   {"tls", "busy"},
		"blob-junk":  {"tls", "busy"},
		"blob-short": {"timeout", "busy"},
		"garbage":    {"tls", "timeout", "busy"},
	}
	// Every TCP peer and the QUIC peer without a proof end in exactly one
	// logged and counted failure. A QUIC handshake holds a slot from its
	// first packet, so the stalled QUIC peer and each fake Initial that
	// parses are counted too, at most once each: up to extraFailures more.
	// The log lines arrive through a pipe: wait for them.
	wantFailures := 2 + garbageConns + blobs + 1
	const extraFailures = 1 + udpInitials
	reasonsOf := map[string]string{} // our port to the listen side's reason
	var peerPorts []string
	for _, c := range append(slices.Clone(cuts), np) {
		if _, port, err := net.SplitHostPort(c.local); err == nil {
			peerPorts = append(peerPorts, port)
		}
	}
	metPoll(within(t, ctx, 10*time.Second), 100*time.Millisecond, func() bool {
		for _, line := range l.logs(msgIs("tunnel handshake failed")) {
			if _, port, err := net.SplitHostPort(line.str("remote")); err == nil {
				reasonsOf[port] = line.str("reason")
			}
		}
		for _, port := range peerPorts {
			if _, ok := reasonsOf[port]; !ok {
				return false
			}
		}
		return true
	})
	for _, line := range l.logs(msgIs("tunnel handshake refused")) {
		if _, port, err := net.SplitHostPort(line.str("remote")); err == nil {
			reasonsOf[port] = "refused:" + line.str("reason")
		}
	}
	for _, k := range kinds {
		var times []time.Duration
		reasons := map[string]int{}
		for _, c := range byKind[k] {
			if c.err != nil {
				t.Errorf("%s peer %s: %v", k, c.local, c.err)
				continue
			}
			if c.after > cutLimit {
				t.Errorf("%s peer %s cut off after %s, want within %s", k, c.local, c.after.Round(time.Millisecond), cutLimit)
			}
			times = append(times, c.after)
			_, port, _ := net.SplitHostPort(c.local)
			r := reasonsOf[port]
			reasons[r]++
			if !slices.Contains(allowed[k], r) {
				t.Errorf("%s peer %s: listen side logged reason %q, want one of %v", k, c.local, r, allowed[k])
			}
		}
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		if len(times) > 0 {
			t.Logf("%-8s %3d peers cut off after min %s median %s max %s; listen side reasons %v", k, len(byKind[k]),
				times[0].Round(time.Millisecond), times[len(times)/2].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond), reasons)
		}
	}
	for _, k := range []string{"silent", "slow"} {
		for _, c := range byKind[k] {
			if c.after < handshakeTime/2 {
				t.Errorf("%s peer cut off after %s, before PQT_HANDSHAKE_TIMEOUT=%s could apply", k, c.after, handshakeTime)
			}
		}
	}
	if np.err != nil {
		t.Errorf("quic peer without proof: %v", np.err)
	} else {
		_, port, _ := net.SplitHostPort(np.local)
		t.Logf("quic no-proof peer cut off after %s; listen side reason %q", np.after.Round(time.Millisecond), reasonsOf[port])
		if np.after > cutLimit {
			t.Errorf("quic peer without proof cut off after %s, want within %s", np.after, cutLimit)
		}
		if r := reasonsOf[port]; r != "timeout" {
			t.Errorf("quic peer without proof: listen side logged reason %q, want timeout", r)
		}
	}
	t.Logf("udp: %d random datagrams and %d fake Initials sent, %d replies", udpGarbage, udpInitials, udpReplies)
	t.Logf("attack took %s", attackTime.Round(time.Millisecond))

	for range dials {
		select {
		case err := <-transferErr:
			if err != nil {
				t.Errorf("transfer under attack: %v", err)
			}
		case <-tctx.Done():
			t.Fatal("transfer did not finish")
		}
	}
	t.Logf("transfers done %s after the attack started", time.Since(attackStart).Round(time.Millisecond))

	after := metAwait(t, ctx, "listen side", lm, 10*time.Second, func(m metSet) error {
		v, _ := m.value("pqtunnel_handshake_failures_total")
		if v-failuresBefore < float64(wantFailures) {
			return fmt.Errorf("%g handshake failures counted, want %d (%s)", v-failuresBefore, wantFailures, m.describe("pqtunnel_handshake_failures_total"))
		}
		return nil
	})
	counted, _ := after.value("pqtunnel_handshake_failures_total")
	if counted -= failuresBefore; counted < float64(wantFailures) || counted > float64(wantFailures+extraFailures) {
		t.Errorf("%g handshake failures counted, want %d to %d (%s)", counted, wantFailures, wantFailures+extraFailures, after.describe("pqtunnel_handshake_failures_total"))
	}
	if n, m := len(l.logs(msgIs("tunnel handshake failed"))), len(l.logs(msgIs("tunnel handshake refused"))); float64(n) != counted || m != 0 {
		t.Errorf("listen side logged %d handshake failures and %d refusals, want %g (as counted) and 0", n, m, counted)
	}
	t.Logf("listen side counted: %s", after.describe("pqtunnel_handshake_failures_total"))

	// Goroutines and memory come back down while the stalled peer still waits.
	settled := metSettle(t, ctx, "listen side", lm, baseG, 10, 10*time.Second)
	select {
	case err := <-stallDone:
		t.Errorf("the stalled QUIC peer ended (%v) before it was released", err)
	default:
	}
	rssAfter := hosRSS(t, pid)
	t.Logf("listen side: goroutines idle %d, during the transfers %d, after %d; VmRSS before the attack %d MiB, after %d MiB",
		baseG, preAttackG, settled, rssBefore>>20, rssAfter>>20)
	if rssAfter > rssBefore+50<<20 {
		t.Errorf("listen side VmRSS grew from %d MiB to %d MiB under attack", rssBefore>>20, rssAfter>>20)
	}
	close(release)
	select {
	case err := <-stallDone:
		t.Logf("stalled QUIC peer released: %v", err)
	case <-within(t, ctx, 10*time.Second).Done():
		t.Error("stalled QUIC peer did not end after release")
	}

	// The established tunnels were untouched and nobody reached the origin.
	if n := o.acceptCount(); n != len(dials) {
		t.Errorf("origin accepted %d connections, want %d (the transfers only)", n, len(dials))
	}
	for _, s := range append([]*side{l}, dials...) {
		if n := len(s.logs(msgIs("tunnel disconnected"))); n != 0 {
			t.Errorf("%s: %d tunnel connections went down during the attack", s.name, n)
		}
		if s.exited() {
			t.Errorf("%s exited", s.name)
		}
	}
	if n := len(l.logs(msgIs("tunnel connected"))); n != len(dials) {
		t.Errorf("listen side logged %d tunnel connections, want %d", n, len(dials))
	}
	metAwait(t, ctx, "listen side", lm, 5*time.Second, func(m metSet) error {
		return metAll(
			metExpect(m, false, 1, "pqtunnel_tunnels_up", "transport", "quic", "group", "X25519MLKEM768"),
			metExpect(m, false, 1, "pqtunnel_tunnels_up", "transport", "tcp", "group", "X25519MLKEM768"),
			metExpect(m, false, float64(len(dials)), "pqtunnel_streams_opened_total"),
		)
	})
}

// hosCAEnv is the environment of a CA-mode side: no pinned identity.
func hosCAEnv(leaf *testca.Cert, ca *testca.CA, extra map[string]string) map[string]string {
	env := map[string]string{
		"PQT_IDENTITY": "",
		"PQT_PEERS":    "",
		"PQT_CERT":     leaf.CertPath,
		"PQT_KEY":      leaf.KeyPath,
		"PQT_CA":       ca.Path,
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// TestCAModeRefusals runs a CA-mode listen side (PQT_CERT, PQT_KEY, PQT_CA,
// PQT_ALLOW=dns:good.example) and, on each transport, presents it with an
// expired certificate, one from another CA, and one outside PQT_ALLOW: each
// handshake is refused with one log line naming the reason and counted,
// and nothing reaches the origin. A dial side with a good certificate then
// connects, carries traffic, and both sides say that the peer was
// authenticated classically only.
func TestCAModeRefusals(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	dir := t.TempDir()
	ca, otherCA := testca.New(t, "ca").Save(t, dir), testca.New(t, "other").Save(t, dir)
	now := time.Now()
	valid := func(c *testca.CA, name, dns string) *testca.Cert {
		return c.Issue(t, testca.Leaf{DNS: []string{dns}}).Save(t, dir, name)
	}
	server := valid(ca, "server", "server.example")
	good := valid(ca, "good", "good.example")
	// A chain that does not verify is refused with reason bad_certificate,
	// one outside PQT_ALLOW with peer_not_allowed, on both transports.
	cases := []struct {
		name, reason, errHas string
		clientHas            string // the TLS alert the client receives
		leaf                 *testca.Cert
		// quicLogged: the refusal is logged and counted over QUIC too; the
		// chain is verified in pqtunnel's own VerifyConnection, so it is.
		quicLogged bool
	}{
		{"expired", "bad_certificate", "expired", "bad certificate", ca.Issue(t, testca.Leaf{DNS: []string{"good.example"}, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}).Save(t, dir, "expired"), true},
		{"wrong CA", "bad_certificate", "unknown authority", "bad certificate", valid(otherCA, "stranger", "good.example"), true},
		{"outside PQT_ALLOW", "peer_not_allowed", "evil.example", "bad certificate", valid(ca, "evil", "evil.example"), true},
	}

	o := startEcho(t)
	lm := metAddr(t)
	l := startListen(t, ctx, 0, "auto", hosCAEnv(server, ca, map[string]string{
		"PQT_TARGET":  o.addr(),
		"PQT_ALLOW":   "dns:good.example",
		"PQT_METRICS": lm,
		// Each refusal's own line: past the first per source and reason
		// they are logged at DEBUG only.
		"PQT_LOG_LEVEL": "debug",
	}))
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	// refusals are the listen side's refusal lines in the order logged.
	refusals := func() []logLine {
		var out []logLine
		for _, line := range parseLogs(l.stderr.String()) {
			if m := line.str("msg"); m == "tunnel handshake refused" || m == "tunnel handshake failed" {
				out = append(out, line)
			}
		}
		return out
	}
	failures := func(m metSet) float64 { v, _ := m.value("pqtunnel_handshake_failures_total"); return v }

	t.Run("refused", func(t *testing.T) {
		transports(t, func(t *testing.T, transport string) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					ctx := within(t, ctx, 20*time.Second)
					before := len(refusals())
					counted := failures(metAwait(t, ctx, "listen side", lm, 5*time.Second, func(metSet) error { return nil }))
					leaf := tc.leaf.Certificate
					conf := &tls.Config{
						MinVersion:       tls.VersionTLS13,
						CurvePreferences: []tls.CurveID{tls.X25519MLKEM768},
						// Present the certificate whatever CAs the server asks for
						// (crypto/tls would otherwise send none for the wrong CA).
						GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &leaf, nil },
						RootCAs:              roots,
						ServerName:           "server.example",
						NextProtos:           []string{wire.ALPN},
					}
					// In TLS 1.3 the client may finish before the server has
					// checked its certificate: the refusal arrives as an alert.
					var clientErr error
					if transport == "tcp" {
						d := tls.Dialer{Config: conf}
						c, err := d.DialContext(ctx, "tcp", l.tunnelAddr)
						if err == nil {
							_ = c.SetReadDeadline(time.Now().Add(5 * time.Second)) // a failure shows as a read error
							var n int
							n, err = c.Read(make([]byte, 1))
							_ = c.Close()
							if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
								t.Fatalf("listen side accepted the certificate: read %d bytes, %v", n, err)
							}
						}
						clientErr = err
					} else {
						conn, err := quic.DialAddr(ctx, l.tunnelAddr, conf, &quic.Config{HandshakeIdleTimeout: 5 * time.Second})
						if err == nil {
							select {
							case <-conn.Context().Done():
								err = context.Cause(conn.Context())
							case <-time.After(5 * time.Second):
								_ = conn.CloseWithError(0, "")
								t.Fatal("listen side kept the connection open")
							}
						}
						clientErr = err
					}
					t.Logf("client: %v", clientErr)
					if clientErr == nil || !strings.Contains(clientErr.Error(), tc.clientHas) {
						t.Fatalf("client error %v, want the alert %q", clientErr, tc.clientHas)
					}
					if transport == "quic" && !tc.quicLogged {
						return
					}

					if !metPoll(within(t, ctx, 5*time.Second), 50*time.Millisecond, func() bool { return len(refusals()) > before }) {
						t.Fatalf("listen side logged no refusal for the %s certificate", tc.name)
					}
					lines := refusals()
					if len(lines) != before+1 {
						t.Errorf("listen side logged %d refusals for one handshake, want 1", len(lines)-before)
					}
					line := lines[len(lines)-1]
					reason := line.str("reason")
					badReason := reason == "" || reason == "timeout" || reason == "busy" || (tc.reason != "" && reason != tc.reason)
					if badReason || !strings.Contains(line.str("err"), tc.errHas) {
						t.Errorf("listen side logged %q reason %q err %q, want reason %q and an error mentioning %q", line.str("msg"), reason, line.str("err"), tc.reason, tc.errHas)
					}
					t.Logf("listen side: %s reason=%s err=%q", line.str("msg"), reason, line.str("err"))
					metAwait(t, ctx, "listen side", lm, 5*time.Second, func(m metSet) error {
						if v := failures(m); v != counted+1 {
							return fmt.Errorf("%g handshake failures counted for one refusal (%s)", v-counted, m.describe("pqtunnel_handshake_failures_total"))
						}
						return metExpect(m, true, 1, "pqtunnel_handshake_failures_total", "reason", reason)
					})
				})
			}
		})
	})
	want := 0
	for _, tc := range cases {
		want++ // tcp
		if tc.quicLogged {
			want++
		}
	}
	if n := len(refusals()); n != want {
		t.Errorf("listen side logged %d refusals for %d refused handshakes", n, want)
	}
	if n := o.acceptCount(); n != 0 {
		t.Errorf("origin accepted %d connections from refused peers", n)
	}

	t.Run("good certificate", func(t *testing.T) {
		transports(t, func(t *testing.T, transport string) {
			d := startDial(t, ctx, l.tunnelAddr, transport, nil, hosCAEnv(good, ca, map[string]string{
				"PQT_CONNECTIONS": "1",
				"PQT_SERVER_NAME": "server.example",
				"PQT_ALLOW":       "dns:server.example",
			}))
			connected := msgIs("tunnel connected", "transport", transport, "group", "X25519MLKEM768", "pq_auth", "false")
			d.waitLog(t, within(t, ctx, 20*time.Second), connected)
			lc := l.waitLog(t, within(t, ctx, 5*time.Second), connected)
			if lc.str("peer") != "good.example" {
				t.Errorf("listen side names the peer %q, want good.example", lc.str("peer"))
			}
			classical := msgIs("peer authenticated classically only", "transport", transport, "pq_auth", "false")
			for _, s := range []*side{d, l} {
				line := s.waitLog(t, within(t, ctx, 5*time.Second), classical)
				if r := line.str("reason"); !strings.Contains(r, "ECDSA P-256 key") {
					t.Errorf("%s: classical reason %q does not name the leaf's ECDSA key", s.name, r)
				}
			}
			if err := echoExact(within(t, ctx, 10*time.Second), d.forward[""], randomBytes(60, 128<<10)); err != nil {
				t.Fatalf("traffic over a CA-mode tunnel: %v", err)
			}
		})
	})
}

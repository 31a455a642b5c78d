package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// Probe is the outcome of one trial tunnel handshake, as 'pqtunnel check'
// reports it.
type Probe struct {
	Peer      string
	Transport string
	Offered   []tls.CurveID
	Err       error
	Group     tls.CurveID
	PeerName  string
	PQAuth    bool
	// Sig is the peer's CertificateVerify signature scheme (ML-DSA-65).
	Sig       string
	Handshake time.Duration
	// ClientHello and ServerHello are TLS record sizes in bytes (TCP only).
	ClientHello, ServerHello int
	// WireGroup is the group the ServerHello's key_share selects, read off
	// the wire (TCP only), independent of what the TLS stack reports.
	WireGroup tls.CurveID
	// FirstFlight is the bytes and datagrams the client sent before the
	// server's first reply (QUIC only).
	FirstFlight, FirstFlightPackets int

	// Routes are the peer's answers about this side's forward routes, when
	// asked (ProbeRoutes).
	Routes []RouteAnswer

	tr transport.Transport
}

// RouteAnswer is what the peer said about one of this side's forward routes.
type RouteAnswer struct {
	// Route is the route's name as logs show it ("default" for the unnamed one).
	Route string
	// Known is whether the peer delivers the route to this side.
	Known bool
	// NotCarried is true for a route whose @ list excludes this peer: it
	// is never sent there, so the peer was not asked.
	NotCarried bool
	// Message is the peer's words: the routes it has, or its origin's state.
	Message string
	// Err is why no answer came (ErrQueryUnsupported from a peer that
	// predates route queries).
	Err error
}

// ErrQueryUnsupported is the answer of a peer too old to answer route queries.
var ErrQueryUnsupported = errors.New("the peer's release does not answer route queries")

// ProbeTunnel runs one handshake plus authentication against peer over tr,
// offering exactly groups, and closes it at once.
func ProbeTunnel(ctx context.Context, cfg Config, peer string, tr transport.Transport, mode hybridtls.PQMode, groups []tls.CurveID) Probe {
	return probeTunnel(ctx, cfg, peer, tr, mode, groups, false, false)
}

// ProbeRoutes is ProbeTunnel that, once the tunnel is up, also asks the
// peer about each of cfg.Forward's routes that may be carried to it, and
// fills Probe.Routes with the answers.
func ProbeRoutes(ctx context.Context, cfg Config, peer string, tr transport.Transport, mode hybridtls.PQMode, groups []tls.CurveID) Probe {
	return probeTunnel(ctx, cfg, peer, tr, mode, groups, false, true)
}

// ErrClassicalProbeStopped ends a ProbeClassical handshake on purpose: the
// peer chose a classical group and sent its certificate, and the probe went
// no further.
var ErrClassicalProbeStopped = errors.New("check: classical probe stopped after the server's certificate, before sending ours")

// ProbeClassical asks peer over tr whether it would complete a handshake
// with classical X25519 alone, without ever authenticating this side under
// a classical key exchange: the handshake is aborted as soon as the peer's
// ServerHello and certificate arrive, before this side's certificate, its
// CertificateVerify or its session proof would be sent. A peer that accepts
// X25519 yields Err wrapping ErrClassicalProbeStopped and Group X25519.
func ProbeClassical(ctx context.Context, cfg Config, peer string, tr transport.Transport) Probe {
	return probeTunnel(ctx, cfg, peer, tr, hybridtls.Prefer, []tls.CurveID{tls.X25519}, true, false)
}

func probeTunnel(ctx context.Context, cfg Config, peer string, tr transport.Transport, mode hybridtls.PQMode, groups []tls.CurveID, stopAtServer, askRoutes bool) Probe {
	p := Probe{Peer: peer, Transport: tr.Name(), Offered: groups, tr: tr}
	pol := cfg.TLS.Policy()
	pol.Mode, pol.Groups = mode, groups
	store, err := hybridtls.NewStore(pol, cfg.TLS.Material())
	if err != nil {
		p.Err = err
		return p
	}
	mc := cfg.Mux
	mc.TLS = store.ClientConfigFor(hostOf(peer))
	var negotiated tls.CurveID
	if stopAtServer {
		// A TLS 1.3 client verifies the server's certificate before it
		// sends its own, so failing here sends nothing of ours. The
		// certificate is never used: it needs no verification.
		mc.TLS = mc.TLS.Clone()
		mc.TLS.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return nil, ErrClassicalProbeStopped // never reached: a guard should the order change
		}
		mc.TLS.InsecureSkipVerify = true
		mc.TLS.VerifyPeerCertificate = nil
		mc.TLS.VerifyConnection = func(cs tls.ConnectionState) error {
			negotiated = cs.CurveID
			return ErrClassicalProbeStopped
		}
	}
	mc.Authenticate = func(cs *tls.ConnectionState, rw io.ReadWriter, client bool) (transport.Peer, error) {
		pr, err := store.Authenticate(cs, rw, hybridtls.RoleClient)
		return transport.Peer{Name: pr.Name, PQAuth: pr.PQAuth, Sig: hybridtls.SignatureSchemeName(pr.Sig), ClassicalReason: pr.ClassicalReason}, err
	}
	var tc *recordingConn
	var pc *countingPacketConn
	mc.WrapConn = func(c net.Conn) net.Conn { tc = &recordingConn{Conn: c}; return tc }
	mc.WrapPacketConn = func(c net.PacketConn) net.PacketConn { pc = &countingPacketConn{PacketConn: c}; return pc }
	s, err := tr.Dial(ctx, peer, &mc)
	if tc != nil {
		p.ClientHello, p.ServerHello, p.WireGroup = tc.hellos()
	}
	if pc != nil {
		p.FirstFlight, p.FirstFlightPackets = pc.firstFlight()
	}
	if err != nil {
		p.Err, p.Group = err, negotiated
		return p
	}
	if stopAtServer {
		_ = s.Close() // cannot happen: VerifyConnection always fails
		p.Err = errors.New("check: classical probe was not stopped")
		return p
	}
	info := s.Info()
	p.Group, p.PeerName, p.PQAuth, p.Sig, p.Handshake = info.TLS.CurveID, info.Peer.Name, info.Peer.PQAuth, info.Peer.Sig, info.Handshake
	if askRoutes {
		for _, r := range cfg.Forward {
			a := RouteAnswer{Route: routeName(r.Name)}
			if !r.allows(info.Peer.Name) {
				a.NotCarried = true
			} else {
				a.Known, a.Message, a.Err = queryRoute(ctx, s, r.Name)
			}
			p.Routes = append(p.Routes, a)
		}
	}
	_ = s.Close() // a probe only
	return p
}

// queryRoute asks the peer on s whether it delivers route to this side.
func queryRoute(ctx context.Context, s transport.Session, route string) (known bool, msg string, err error) {
	st, err := s.OpenStream(ctx)
	if err != nil {
		return false, "", fmt.Errorf("open route query stream: %w", err)
	}
	defer st.Reset() // the answer is all it carries
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl) // a failure shows as a failed read
	}
	req, err := wire.AppendRequest(nil, wire.Request{Kind: wire.KindRouteQuery, Route: route})
	if err == nil {
		_, err = st.Write(req)
	}
	if err != nil {
		return false, "", fmt.Errorf("send route query: %w", err)
	}
	resp, err := wire.ReadResponse(st)
	if err != nil {
		return false, "", fmt.Errorf("read route query answer: %w", err)
	}
	switch resp.Status {
	case wire.StatusOK:
		return true, resp.Message, nil
	case wire.StatusUnknownRoute:
		return false, resp.Message, nil
	case wire.StatusUnknownKind:
		return false, resp.Message, ErrQueryUnsupported
	}
	return false, resp.Message, fmt.Errorf("route query answered %s: %s", resp.Status, resp.Message)
}

// ErrPortUnreachable is a UDP probe's failure when the peer's host answers
// with ICMP port unreachable, which the QUIC dial hears at once.
var ErrPortUnreachable = transport.ErrPortUnreachable

// recordingConn keeps what was written before the first read (the
// ClientHello) and the first bytes read (the ServerHello record).
type recordingConn struct {
	net.Conn
	mu      sync.Mutex
	written int
	readAny bool
	read    []byte
}

const maxRecorded = 16 << 10

func (r *recordingConn) Write(b []byte) (int, error) {
	r.mu.Lock()
	if !r.readAny {
		r.written += len(b)
	}
	r.mu.Unlock()
	return r.Conn.Write(b)
}

func (r *recordingConn) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.mu.Lock()
	r.readAny = true
	if room := maxRecorded - len(r.read); room > 0 {
		r.read = append(r.read, b[:min(n, room)]...)
	}
	r.mu.Unlock()
	return n, err
}

// hellos parses the first server record as a ServerHello and returns the
// sizes and the key_share group it selects.
func (r *recordingConn) hellos() (clientHello, serverHello int, group tls.CurveID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.read
	if len(rec) < 5 || rec[0] != 22 {
		return r.written, 0, 0
	}
	n := int(binary.BigEndian.Uint16(rec[3:5]))
	if len(rec) < 5+n {
		return r.written, 0, 0
	}
	g, _ := ServerHelloKeyShare(rec[5 : 5+n])
	return r.written, 5 + n, g
}

// ServerHelloKeyShare returns the group of the key_share extension in a TLS
// 1.3 ServerHello handshake message (type 2), parsing only what it needs.
func ServerHelloKeyShare(msg []byte) (tls.CurveID, error) {
	errShort := errors.New("truncated ServerHello")
	if len(msg) < 4 || msg[0] != 2 {
		return 0, errors.New("not a ServerHello")
	}
	body := msg[4:]
	// legacy_version(2) random(32) session_id(1+n) cipher(2) compression(1)
	if len(body) < 35 {
		return 0, errShort
	}
	sid := int(body[34])
	off := 35 + sid + 3
	if len(body) < off+2 {
		return 0, errShort
	}
	extLen := int(binary.BigEndian.Uint16(body[off:]))
	exts := body[off+2:]
	if len(exts) < extLen {
		return 0, errShort
	}
	exts = exts[:extLen]
	for len(exts) >= 4 {
		typ := binary.BigEndian.Uint16(exts)
		l := int(binary.BigEndian.Uint16(exts[2:]))
		if len(exts) < 4+l {
			return 0, errShort
		}
		if typ == 51 && l >= 2 { // key_share
			return tls.CurveID(binary.BigEndian.Uint16(exts[4:])), nil
		}
		exts = exts[4+l:]
	}
	return 0, errors.New("ServerHello has no key_share")
}

// countingPacketConn counts the datagrams of the client's first flight:
// those sent at once at the start, before the server's first flight
// arrives. A server may acknowledge the first Initial packet at once with a
// small datagram, so only a large one (its ServerHello and certificate)
// ends the count.
const serverFlightMin = 1000

// firstFlightGap ends the first flight at the first pause this long between
// two datagrams. quic-go sends the whole flight in one go and, while the
// server is silent, retransmits it only when its first probe timeout fires,
// 200 ms later (twice its initial RTT estimate of 100 ms). Counting those
// retransmissions, as check once did, reported 4 or 8 datagrams for a
// 2-datagram flight whenever the listen side took longer than that to
// answer (a busy machine, SecP384r1MLKEM1024).
const firstFlightGap = 100 * time.Millisecond

type countingPacketConn struct {
	net.PacketConn
	mu               sync.Mutex
	received, paused bool
	last             time.Time // when the last counted datagram was sent
	sentBytes, sentN int
}

func (c *countingPacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	now := time.Now()
	if c.sentN > 0 && now.Sub(c.last) >= firstFlightGap {
		c.paused = true
	}
	if !c.received && !c.paused {
		c.sentBytes += len(b)
		c.sentN++
		c.last = now
	}
	c.mu.Unlock()
	return c.PacketConn.WriteTo(b, addr)
}

func (c *countingPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(b)
	if err == nil && n >= serverFlightMin {
		c.mu.Lock()
		c.received = true
		c.mu.Unlock()
	}
	return n, addr, err
}

// SetReadBuffer, SetWriteBuffer and SyscallConn let quic-go size the
// socket buffers as it does for a plain UDP socket.
func (c *countingPacketConn) SetReadBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetReadBuffer(n)
}

func (c *countingPacketConn) SetWriteBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetWriteBuffer(n)
}

func (c *countingPacketConn) SyscallConn() (syscall.RawConn, error) {
	return c.PacketConn.(*net.UDPConn).SyscallConn()
}

func (c *countingPacketConn) firstFlight() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sentBytes, c.sentN
}

// Diagnosis is what a failed handshake means for the person running it.
type Diagnosis int

const (
	DiagnosisOK              Diagnosis = iota
	DiagnosisNoUDPAnswer               // the UDP port is blocked or unserved
	DiagnosisPortUnreachable           // ICMP port unreachable for the UDP port
	DiagnosisRefused                   // nothing listens on the TCP port
	DiagnosisTimeout                   // the handshake did not complete
	DiagnosisPeerNotAllowed            // we do not accept the peer's identity
	DiagnosisRejectedByPeer            // the peer does not accept ours
	DiagnosisProofFailed               // the peer's ML-DSA-65 proof failed
	DiagnosisGroupsRefused             // the peer accepts none of the offered groups
	DiagnosisVersionMismatch           // the peer speaks another protocol version
	DiagnosisOther
)

// Unreachable reports whether the peer could not be reached at all, so
// that probing other groups would say the same.
func (d Diagnosis) Unreachable() bool {
	return d == DiagnosisNoUDPAnswer || d == DiagnosisPortUnreachable || d == DiagnosisRefused || d == DiagnosisTimeout
}

// AboutIdentity reports whether the failure is about who the sides are
// (or which protocol they speak), not about the groups offered, so that
// probing other groups would say the same.
func (d Diagnosis) AboutIdentity() bool {
	return d == DiagnosisPeerNotAllowed || d == DiagnosisRejectedByPeer || d == DiagnosisProofFailed || d == DiagnosisVersionMismatch
}

// Diagnosis classifies the probe's failure.
func (p Probe) Diagnosis() Diagnosis {
	d, _ := diagnose(p.Err, p.tr, p.Offered, nil)
	return d
}

// Verdict is a person-readable diagnosis of a failed probe; ours is this
// side's authentication material, which the advice names.
func (p Probe) Verdict(ours *hybridtls.Material) string {
	if p.Err == nil {
		return "ok"
	}
	_, v := diagnose(p.Err, p.tr, p.Offered, ours)
	return v
}

// diagnose says in words a person can act on why a tunnel handshake over
// tr failed; ours (nil when only the Diagnosis is wanted) says whether this
// side is pinned or in CA mode, and so what the advice names.
func diagnose(err error, tr transport.Transport, offered []tls.CurveID, ours *hybridtls.Material) (Diagnosis, string) {
	if err == nil {
		return DiagnosisOK, "ok"
	}
	msg := err.Error()
	caMode, ourName := false, ""
	if ours != nil {
		caMode, ourName = !ours.Pinned(), ours.Name()
	}
	// A timeout means "no answer over UDP" when the transport asked for
	// failed itself over UDP, not when a Fallback's secondary timed out.
	he, _ := errors.AsType[*transport.HandshakeError](err)
	overUDP := tr != nil && transport.UsesUDP(tr) && he != nil && he.Transport == tr.Name()
	switch {
	case errors.Is(err, ErrPortUnreachable):
		return DiagnosisPortUnreachable, "refused over UDP: " + ErrPortUnreachable.Error() + "; open UDP on the peer's port or set PQT_TRANSPORT=tcp"
	case overUDP && isTimeout(err):
		return DiagnosisNoUDPAnswer, "no answer over UDP: the UDP port is blocked or nothing listens there; open UDP on the peer's port or set PQT_TRANSPORT=tcp"
	case isRefused(err):
		return DiagnosisRefused, "connection refused: nothing listens on that TCP port"
	case isTimeout(err):
		return DiagnosisTimeout, "timed out: the peer did not complete the handshake"
	case errors.Is(err, hybridtls.ErrPeerNotAllowed):
		if caMode {
			return DiagnosisPeerNotAllowed, "the peer's certificate is not one we accept: " + msg + " (add a PQT_ALLOW rule for its certificate name if it is the right peer)"
		}
		return DiagnosisPeerNotAllowed, "the peer's identity is not one we accept: " + msg + " (add its pin to PQT_PEERS if it is the right peer)"
	case transport.Classify(err) == transport.ReasonRejectedByPeer:
		if caMode {
			return DiagnosisRejectedByPeer, "the peer refused our certificate " + ourName + ": check that its PQT_CA signs our PQT_CERT and its PQT_ALLOW names us"
		}
		return DiagnosisRejectedByPeer, "the peer refused our identity: add our pin " + ourName + " to the peer's PQT_PEERS"
	case errors.Is(err, hybridtls.ErrProof):
		return DiagnosisProofFailed, "the peer failed the session proof (its Ed25519 signature over this connection): " + msg
	case transport.Classify(err) == transport.ReasonVersionMismatch:
		if ve, ok := errors.AsType[*hybridtls.VersionError](err); ok {
			return DiagnosisVersionMismatch, ve.Error()
		}
		return DiagnosisVersionMismatch, "the peer speaks another pqtunnel protocol version (we offer " + wire.ALPN + "): run the same release on both sides"
	case transport.PeerRefusedGroups(err):
		return DiagnosisGroupsRefused, "the peer accepts none of " + hybridtls.GroupNames(offered)
	}
	return DiagnosisOther, msg
}

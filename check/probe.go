// Package check is pqtunnel's diagnostics: trial tunnel handshakes
// against a peer (the probes behind 'pqtunnel check'), the route queries
// that ask it which routes it delivers, and Diagnose, which says in words a
// person can act on what a failed handshake means. It decides by error
// types (transport.HandshakeError and its Reason, hybridtls's typed
// errors, net and syscall errors), never by message text. The engine uses
// Diagnose for the hint of a failed tunnel dial.
package check

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/pqtunnel/pqtunnel/auth"
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

	tr   transport.Transport
	name func(setting string) string
}

// Config is what a probe takes from a dial side's configuration.
type Config struct {
	// TLS is the side's identity, pins and key-exchange policy; a probe
	// offers its own groups under the same identity.
	TLS *hybridtls.Store
	// Mux holds the transport timeouts and limits; TLS and Authenticate
	// are set by the probe.
	Mux transport.Config
	// Forward are the side's forward routes, which ProbeRoutes asks about.
	Forward []Route
	// SettingName names settings in a Probe's Verdict (see Diagnose); nil
	// uses their Go names.
	SettingName func(setting string) string
}

// Route is a forward route as a route query needs it.
type Route struct {
	// Name is "" for the single unnamed route.
	Name string
	// Allow names the peers whose tunnels carry the route; empty is all.
	Allow []string
}

// label is the route's name as logs show it.
func (r Route) label() string {
	if r.Name == "" {
		return "default"
	}
	return r.Name
}

// carriedTo reports whether the route is sent over the tunnels of peer.
func (r Route) carriedTo(peer string) bool {
	return len(r.Allow) == 0 || slices.Contains(r.Allow, peer)
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
	p := Probe{Peer: peer, Transport: tr.Name(), Offered: groups, tr: tr, name: cfg.SettingName}
	pol := cfg.TLS.Policy()
	pol.Mode, pol.Groups = mode, groups
	store, err := hybridtls.NewStore(pol, cfg.TLS.Authenticator())
	if err != nil {
		p.Err = err
		return p
	}
	mc := cfg.Mux
	mc.TLS = store.ClientConfigFor(HostOf(peer))
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
		return transport.Peer{Name: pr.Name, PQAuth: pr.PQAuth, Sig: auth.SignatureSchemeName(pr.Sig), ClassicalReason: pr.ClassicalReason}, err
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
			a := RouteAnswer{Route: r.label()}
			if !r.carriedTo(info.Peer.Name) {
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

// HostOf is the host part of a host:port address, or the whole of one
// without a port.
func HostOf(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

package check

import (
	"context"
	"crypto/tls"
	"errors"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/wire"
)

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
	d, _ := Diagnose(p.Err, p.tr, p.Offered, nil, nil)
	return d
}

// Verdict is a person-readable diagnosis of a failed probe; ours is this
// side's authenticator, whose advice it gives.
func (p Probe) Verdict(ours auth.Authenticator) string {
	if p.Err == nil {
		return "ok"
	}
	_, v := Diagnose(p.Err, p.tr, p.Offered, ours, p.name)
	return v
}

// Diagnose says in words a person can act on why a tunnel handshake over
// tr failed (offering the groups offered); ours (nil when only the
// Diagnosis is wanted) is this side's authenticator, whose mode's advice
// the words give. The advice names settings through name, by their Go
// names (Transport, Peers, Allow, CA, Cert: both sides have the same), in
// the caller's terms; nil uses those names.
func Diagnose(err error, tr transport.Transport, offered []tls.CurveID, ours auth.Authenticator, name func(setting string) string) (Diagnosis, string) {
	if err == nil {
		return DiagnosisOK, "ok"
	}
	if name == nil {
		name = func(setting string) string { return setting }
	}
	msg := err.Error()
	var advice auth.Advice
	if ours != nil {
		advice = ours.Advice(func(s auth.Setting) string { return name(settingNames[s]) })
	}
	// A timeout means "no answer over UDP" when the transport asked for
	// failed itself over UDP, not when a Fallback's secondary timed out.
	he, _ := errors.AsType[*transport.HandshakeError](err)
	overUDP := tr != nil && transport.UsesUDP(tr) && he != nil && he.Transport == tr.Name()
	switch {
	case errors.Is(err, ErrPortUnreachable):
		return DiagnosisPortUnreachable, "refused over UDP: " + ErrPortUnreachable.Error() + "; open UDP on the peer's port or set " + name("Transport") + "=tcp"
	case overUDP && isTimeout(err):
		return DiagnosisNoUDPAnswer, "no answer over UDP: the UDP port is blocked or nothing listens there; open UDP on the peer's port or set " + name("Transport") + "=tcp"
	case IsRefused(err):
		return DiagnosisRefused, "connection refused: nothing listens on that TCP port"
	case isTimeout(err):
		return DiagnosisTimeout, "timed out: the peer did not complete the handshake"
	case errors.Is(err, auth.ErrPeerNotAllowed):
		return DiagnosisPeerNotAllowed, "the peer's " + advice.Credential + " is not one we accept: " + msg + " (" + advice.Accept + " if it is the right peer)"
	case transport.Classify(err) == transport.ReasonRejectedByPeer:
		return DiagnosisRejectedByPeer, "the peer refused our " + advice.Rejected
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

// settingNames are the Go names by which Diagnose's caller names the
// authenticators' settings.
var settingNames = map[auth.Setting]string{auth.SettingPeers: "Peers", auth.SettingAllow: "Allow", auth.SettingCAs: "CA", auth.SettingCert: "Cert"}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

package pinned

import (
	"crypto/mldsa"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth"
)

// What callers outside the mode ask of it: whom it accepts, that a pin
// never expires, whether its own identity meets CNSA 2.0.
func TestAuthenticatorAnswersCallers(t *testing.T) {
	id, peer := mustIdentity(t), mustIdentity(t)
	if ps := (&Authenticator{Identity: id}).PeerSet(); ps.Setting != auth.SettingPeers || ps.Listed != 0 || !ps.Nobody {
		t.Errorf("no pins: PeerSet = %+v, want Peers, none listed, nobody", ps)
	}
	a := &Authenticator{Identity: id, Peers: []Pin{peer.Pin}}
	if ps := a.PeerSet(); ps.Setting != auth.SettingPeers || ps.Listed != 1 || ps.Nobody {
		t.Errorf("one pin: PeerSet = %+v, want Peers, one listed", ps)
	}
	if _, ok := a.PeerExpiry([]*x509.Certificate{peer.Certificate.Leaf}); ok {
		t.Error("PeerExpiry says a pinned peer expires")
	}
	err := a.CheckMLDSA87()
	if pe, ok := errors.AsType[*auth.ProfileError](err); !ok || pe.Setting != auth.SettingIdentity || pe.Have != "the identity's key is ML-DSA-65" {
		t.Errorf("CheckMLDSA87 of an ML-DSA-65 identity = %v, want a ProfileError for the identity", err)
	}
	id87, err := GenerateIdentityFor(mldsa.MLDSA87())
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Authenticator{Identity: id87}).CheckMLDSA87(); err != nil {
		t.Errorf("CheckMLDSA87 of an ML-DSA-87 identity: %v", err)
	}
}

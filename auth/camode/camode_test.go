package camode

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
)

// What callers outside the mode ask of it: whom it accepts, when a peer's
// certificates end, whether its own certificate meets CNSA 2.0.
func TestAuthenticatorAnswersCallers(t *testing.T) {
	ca := testca.NewRoot(t, "root", testca.MLDSA87)
	cert := ca.Issue(t, testca.Leaf{DNS: []string{"a.test"}, Key: testca.MLDSA87})

	for _, tt := range []struct {
		name   string
		a      *Authenticator
		listed int
		nobody bool
	}{
		{"no rules: every certificate the CA signed", &Authenticator{}, 0, false},
		{"an emptied allow file", &Authenticator{AllowListed: true}, 0, true},
		{"two rules", &Authenticator{Allow: []AllowRule{{Kind: "dns", Value: "a.test"}, {Kind: "cn", Value: "b"}}}, 2, false},
	} {
		if ps := tt.a.PeerSet(); ps.Setting != auth.SettingAllow || ps.Listed != tt.listed || ps.Nobody != tt.nobody {
			t.Errorf("%s: PeerSet = %+v, want Allow, %d listed, nobody %v", tt.name, ps, tt.listed, tt.nobody)
		}
	}

	early := time.Now().Add(2 * time.Hour).Truncate(time.Second)
	inter := &x509.Certificate{NotAfter: early}
	if got, ok := (&Authenticator{}).PeerExpiry([]*x509.Certificate{cert.Leaf, inter}); !ok || !got.Equal(early) {
		t.Errorf("PeerExpiry = %v, %v; want the intermediate's %v", got, ok, early)
	}
	if _, ok := (&Authenticator{}).PeerExpiry(nil); ok {
		t.Error("PeerExpiry of no certificates says they expire")
	}

	if err := (&Authenticator{Certificate: &cert.Certificate}).CheckMLDSA87(); err != nil {
		t.Errorf("CheckMLDSA87 of an ML-DSA-87 chain: %v", err)
	}
	classical := testca.New(t, "p256").Issue(t, testca.Leaf{DNS: []string{"b.test"}})
	err := (&Authenticator{Certificate: &classical.Certificate}).CheckMLDSA87()
	if pe, ok := errors.AsType[*auth.ProfileError](err); !ok || pe.Setting != auth.SettingCert || !strings.Contains(pe.Have, "ECDSA") {
		t.Errorf("CheckMLDSA87 of a P-256 certificate = %v, want a ProfileError for the certificate naming its ECDSA key", err)
	}
}

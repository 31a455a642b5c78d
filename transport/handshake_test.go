package transport_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/pqtunnel/pqtunnel/transport"
)

// reasoned is an error that declares its reason, as hybridtls's refusals do.
type reasoned string

func (r reasoned) Error() string           { return "refused: " + string(r) }
func (r reasoned) HandshakeReason() string { return string(r) }

func TestClassify(t *testing.T) {
	timeout := &net.OpError{Op: "read", Err: context.DeadlineExceeded}
	tests := []struct {
		name string
		err  error
		want transport.Reason
	}{
		{"nil", nil, ""},
		{"policy", fmt.Errorf("x: %w", reasoned("peer_not_allowed")), transport.ReasonPeerNotAllowed},
		{"busy", fmt.Errorf("x: %w", transport.ErrBusy), transport.ReasonBusy},
		{"peer refused our certificate", fmt.Errorf("x: %w", transport.PeerAlert(42)), transport.ReasonRejectedByPeer},
		{"peer requires a certificate", transport.PeerAlert(116), transport.ReasonRejectedByPeer},
		// Over QUIC the alert arrives while the proof is awaited: it says why.
		{"proof failed by an alert", fmt.Errorf("%w: %w", reasoned("proof_failed"), transport.PeerAlert(48)), transport.ReasonRejectedByPeer},
		{"proof failed", reasoned("proof_failed"), transport.ReasonProofFailed},
		{"timeout", timeout, transport.ReasonTimeout},
		{"peer found no common group", transport.PeerAlert(40), transport.ReasonNoCommonGroup},
		{"we found no common group", fmt.Errorf("tls: no key exchanges%.0w", tls.AlertError(40)), transport.ReasonNoCommonGroup},
		{"other local alert", tls.AlertError(80), transport.ReasonTLS},
		{"peer speaks another ALPN", transport.PeerAlert(120), transport.ReasonVersionMismatch},
		{"we speak another ALPN", fmt.Errorf("x%.0w", tls.AlertError(120)), transport.ReasonVersionMismatch},
		{"anything else", errors.New("handshake failure"), transport.ReasonTLS},
		{"already classified", &transport.HandshakeError{Reason: transport.ReasonBusy, Err: errors.New("x")}, transport.ReasonBusy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := transport.Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

func TestHandshakeErrorKeepsTextAndChain(t *testing.T) {
	inner := fmt.Errorf("tls handshake: %w", transport.PeerAlert(40))
	err := transport.NewHandshakeError("tcp", transport.StageTLS, inner)
	var he *transport.HandshakeError
	if !errors.As(err, &he) || he.Reason != transport.ReasonNoCommonGroup || he.Stage != transport.StageTLS || he.Transport != "tcp" {
		t.Fatalf("NewHandshakeError = %+v", err)
	}
	if err.Error() != inner.Error() || !errors.Is(err, transport.PeerAlert(40)) {
		t.Errorf("HandshakeError changed the text or the chain: %q", err)
	}
	if again := transport.NewHandshakeError("quic", transport.StageAuthenticate, fmt.Errorf("w: %w", err)); again != error(he) {
		t.Errorf("a wrapped HandshakeError was classified again: %+v", again)
	}
	if !transport.PeerRefusedGroups(err) || transport.PeerRefusedGroups(transport.PeerAlert(42)) {
		t.Error("PeerRefusedGroups misreads the alerts")
	}
}

type named string

func (n named) Name() string { return string(n) }
func (n named) Dial(context.Context, string, *transport.Config) (transport.Session, error) {
	return nil, errors.New("not dialable")
}
func (n named) Listen(string, *transport.Config) (transport.Listener, error) {
	return nil, errors.New("not listenable")
}

func TestRegistry(t *testing.T) {
	transport.Register(named("registry-test"))
	got, err := transport.Lookup("registry-test")
	if err != nil || got.Name() != "registry-test" {
		t.Fatalf("Lookup = %v, %v", got, err)
	}
	if _, err := transport.Lookup("registry-test-unknown"); !errors.Is(err, transport.ErrUnknown) {
		t.Errorf("Lookup of an unknown name = %v, want ErrUnknown", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("registering a name twice did not panic")
			}
		}()
		transport.Register(named("registry-test"))
	}()
}

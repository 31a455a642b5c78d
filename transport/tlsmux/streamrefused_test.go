package tlsmux

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// A stream over the peer's MaxStreams is reset by the peer's yamux; the
// opener's first Read, and a Write after the reset, name it
// transport.ErrStreamRefused. A stream the
// peer's application accepted and then reset is not called refused.
func TestStreamOverThePeersBoundIsRefused(t *testing.T) {
	cc, sc := transporttest.Configs(t)
	sc.MaxStreams = 1
	cc.MaxStreams = 2 // this side's own settings assume more
	client, server := transporttest.SessionPair(t, Transport{}, cc, sc)
	opened, accepted := transporttest.OpenAccepted(t, client, server, []byte("a"))

	over, err := client.OpenStream(transporttest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer over.Reset()
	if _, err := over.Write([]byte("b")); err != nil {
		t.Fatalf("write: %v", err) // queued before the reset comes back
	}
	_ = over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(over, make([]byte, 1)); !errors.Is(err, transport.ErrStreamRefused) {
		t.Errorf("read of the stream over the peer's bound: %v, want ErrStreamRefused", err)
	}
	// A write after the refusal came back says so too, as the engine's
	// first write does when the refusal beats it.
	if _, err := over.Write([]byte("c")); !errors.Is(err, transport.ErrStreamRefused) {
		t.Errorf("write to the stream over the peer's bound after its refusal: %v, want ErrStreamRefused", err)
	}

	accepted.Reset()
	_ = opened.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadFull(opened, make([]byte, 1))
	if err == nil || errors.Is(err, transport.ErrStreamRefused) {
		t.Errorf("read of a stream the peer accepted and reset: %v, want a reset that is not ErrStreamRefused", err)
	}
}

package transporttest

import (
	"context"
	"sync/atomic"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
)

// Blockable is an in-memory transport named "fakeudp" whose handshakes can
// be made to go unanswered, as QUIC's are when UDP is blocked: the
// primary of a Fallback under test.
type Blockable struct {
	*memtransport.Transport
	// Blocked makes Dial wait out its handshake timeout and fail with it.
	Blocked atomic.Bool
	// Tried receives a token, if there is room, when a blocked dial begins.
	Tried chan struct{}
}

// NewBlockable returns an unblocked Blockable on a network of its own.
func NewBlockable() *Blockable {
	return &Blockable{Transport: memtransport.New(), Tried: make(chan struct{}, 1)}
}

func (b *Blockable) Name() string  { return "fakeudp" }
func (b *Blockable) UsesUDP() bool { return true }

func (b *Blockable) Dial(ctx context.Context, addr string, c *transport.Config) (transport.Session, error) {
	if !b.Blocked.Load() {
		return b.Transport.Dial(ctx, addr, c)
	}
	ctx, cancel := context.WithTimeout(ctx, c.WithDefaults().HandshakeTimeout)
	defer cancel()
	select {
	case b.Tried <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return nil, transport.NewHandshakeError(b.Name(), transport.StageTLS, ctx.Err())
}

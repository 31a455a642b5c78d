package proxy

import (
	"time"

	"github.com/pqtunnel/pqtunnel/tlsroute"
	"github.com/pqtunnel/pqtunnel/transport"
)

// Observer is told of the engine's events, for measurement; Metrics is
// the Prometheus one. The engine calls it from many goroutines at once, so
// its methods must be safe for concurrent use and must not block. A route
// is given by its label: "default" for the unnamed route, "unknown" for a
// name a peer sent that this side does not have.
type Observer interface {
	// TunnelUp and TunnelDown bracket each tunnel connection the engine
	// admitted; reason is why it ended, as "tunnel disconnected" logs it.
	TunnelUp(info transport.Info)
	TunnelDown(info transport.Info, reason string)
	// HandshakeFailed is a tunnel handshake that failed or was refused,
	// including the TLS policy's refusals inside the TLS stack, by reason
	// (a transport.Reason, or "busy").
	HandshakeFailed(reason string)
	// TunnelRevoked is a live tunnel connection closed because its peer
	// (a label, see Engine.peerLabel) is no longer accepted.
	TunnelRevoked(peer string)
	// Reconnected is a dial side's tunnel connection re-established after
	// one was lost.
	Reconnected()
	// TransportMoved is a dial side's tunnel connection replaced by one
	// over another transport (auto), by reason (transport.MoveLoss,
	// transport.MoveBack).
	TransportMoved(from, to, reason string)
	// ExtraTunnelOpened is a dial side's tunnel connection opened beyond
	// Connections because the others near their stream bound.
	ExtraTunnelOpened()
	// TunnelAddressesChanged is a Tunnel name that resolves to a new set of
	// addresses: added and removed count the difference.
	TunnelAddressesChanged(added, removed int)

	// StreamOpened and StreamClosed bracket each stream, by route and
	// direction: "out" (a local client sent through the tunnel), "in"
	// (delivered to a target) or "local" (joined on this side).
	StreamOpened(route, direction string)
	StreamClosed(route, direction string)
	// StreamFailed is a stream refused or aborted, by reason.
	StreamFailed(route, reason string)
	// StreamNotAllowed is a stream refused because the route's allow list
	// does not name the peer (a label).
	StreamNotAllowed(route, peer string)
	// StreamBytes is the payload one stream carried: up is client to
	// origin, down origin to client.
	StreamBytes(route string, up, down int64)
	// OriginDialed is how long one dial of a target's origin took, whether
	// it connected or not.
	OriginDialed(route string, took time.Duration)

	// TLSHandshake is a completed handshake of a tls:// route on side
	// "terminate" or "originate"; sni is the certificate name it matched as
	// a label. TLSRefused is one that failed or was refused, by reason.
	TLSHandshake(route, side string, info tlsroute.Info, sni string)
	TLSRefused(route, side, reason string)
}

var _ Observer = (*Metrics)(nil)

// observers tells each of its observers of every event.
type observers []Observer

var _ Observer = observers(nil)

func (os observers) TunnelUp(info transport.Info) {
	for _, o := range os {
		o.TunnelUp(info)
	}
}

func (os observers) TunnelDown(info transport.Info, reason string) {
	for _, o := range os {
		o.TunnelDown(info, reason)
	}
}

func (os observers) HandshakeFailed(reason string) {
	for _, o := range os {
		o.HandshakeFailed(reason)
	}
}

func (os observers) TunnelRevoked(peer string) {
	for _, o := range os {
		o.TunnelRevoked(peer)
	}
}

func (os observers) TransportMoved(from, to, reason string) {
	for _, o := range os {
		o.TransportMoved(from, to, reason)
	}
}

func (os observers) ExtraTunnelOpened() {
	for _, o := range os {
		o.ExtraTunnelOpened()
	}
}

func (os observers) TunnelAddressesChanged(added, removed int) {
	for _, o := range os {
		o.TunnelAddressesChanged(added, removed)
	}
}

func (os observers) Reconnected() {
	for _, o := range os {
		o.Reconnected()
	}
}

func (os observers) StreamOpened(route, direction string) {
	for _, o := range os {
		o.StreamOpened(route, direction)
	}
}

func (os observers) StreamClosed(route, direction string) {
	for _, o := range os {
		o.StreamClosed(route, direction)
	}
}

func (os observers) StreamFailed(route, reason string) {
	for _, o := range os {
		o.StreamFailed(route, reason)
	}
}

func (os observers) StreamNotAllowed(route, peer string) {
	for _, o := range os {
		o.StreamNotAllowed(route, peer)
	}
}

func (os observers) StreamBytes(route string, up, down int64) {
	for _, o := range os {
		o.StreamBytes(route, up, down)
	}
}

func (os observers) OriginDialed(route string, took time.Duration) {
	for _, o := range os {
		o.OriginDialed(route, took)
	}
}

func (os observers) TLSHandshake(route, side string, info tlsroute.Info, sni string) {
	for _, o := range os {
		o.TLSHandshake(route, side, info, sni)
	}
}

func (os observers) TLSRefused(route, side, reason string) {
	for _, o := range os {
		o.TLSRefused(route, side, reason)
	}
}

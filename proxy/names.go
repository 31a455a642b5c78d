package proxy

import (
	"errors"
	"fmt"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/route"
)

// name is how runtime messages (logs, refusals sent to the peer) name the
// Config field of that Go name: through Config.SettingName, in the
// caller's terms, else as the field itself.
func (e *Engine) name(field string) string {
	if e.cfg.SettingName != nil {
		return e.cfg.SettingName(field)
	}
	return field
}

// pqPreferNote is the note on a connection made without a post-quantum
// key exchange, naming the policy setting that allowed it.
func pqPreferNote(p hybridtls.Policy) string {
	return "(" + p.NameOf(hybridtls.SettingMode) + "=" + string(hybridtls.Prefer) + ")"
}

// poolRefusal says why the pool refused a tunnel connection, naming the
// settings at play.
func (e *Engine) poolRefusal(err error) string {
	switch {
	case errors.Is(err, errPoolFull):
		return e.name("MaxConnections") + " reached"
	case errors.Is(err, errPeerShare):
		return "the peer holds its share of " + e.name("MaxConnections") + " (" + e.name("PeerShare") + ")"
	}
	return err.Error()
}

// namedIdle adds to a stream's route.ErrIdle the setting that timed it out.
func (e *Engine) namedIdle(err error) error {
	if errors.Is(err, route.ErrIdle) {
		return fmt.Errorf("%w (%s)", err, e.name("StreamIdleTimeout"))
	}
	return err
}

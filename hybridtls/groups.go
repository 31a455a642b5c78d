// Package hybridtls holds pqtunnel's TLS 1.3 policy: which key-exchange
// groups are offered and accepted (strict or prefer), the Store that builds
// the tunnels' TLS configurations around an auth.Authenticator (whichever
// mode identifies the peers) and swaps it on reload, and the Ed25519 proof
// that binds a pinned peer's second key to the TLS session, whose
// handshake ML-DSA signs. It opens no sockets and runs no loops: callers
// hand it a tls.ConnectionState and an io.ReadWriter.
package hybridtls

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"github.com/pqtunnel/pqtunnel/auth"
)

// PQMode says whether a classical key exchange may ever be used.
type PQMode string

const (
	// Strict offers and accepts only post-quantum groups (hybrid, or pure
	// MLKEM1024 when listed).
	Strict PQMode = "strict"
	// Prefer offers hybrid groups first but accepts classical X25519,
	// reporting every such connection.
	Prefer PQMode = "prefer"
)

// ParsePQMode parses a mode name, strict or prefer; the empty string is Strict.
func ParsePQMode(s string) (PQMode, error) {
	switch PQMode(strings.ToLower(strings.TrimSpace(s))) {
	case "", Strict:
		return Strict, nil
	case Prefer:
		return Prefer, nil
	}
	return "", fmt.Errorf("unknown mode %q (want strict or prefer)", s)
}

// DefaultGroups is the default group list: every hybrid Go supports, fastest
// first (the same list as defaults.Groups, as a test in internal/config checks).
var DefaultGroups = []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024}

var groupByName = map[string]tls.CurveID{
	"x25519mlkem768":     tls.X25519MLKEM768,
	"secp256r1mlkem768":  tls.SecP256r1MLKEM768,
	"secp384r1mlkem1024": tls.SecP384r1MLKEM1024,
	"mlkem1024":          tls.MLKEM1024,
	"x25519":             tls.X25519,
	"p-256":              tls.CurveP256,
	"secp256r1":          tls.CurveP256,
	"p256":               tls.CurveP256,
	"p-384":              tls.CurveP384,
	"secp384r1":          tls.CurveP384,
	"p384":               tls.CurveP384,
	"p-521":              tls.CurveP521,
	"secp521r1":          tls.CurveP521,
	"p521":               tls.CurveP521,
}

// IsHybrid reports whether g combines a classical and a post-quantum KEM.
func IsHybrid(g tls.CurveID) bool {
	switch g {
	case tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024:
		return true
	}
	return false
}

// IsPostQuantum reports whether g has a post-quantum KEM: the hybrids, and
// pure MLKEM1024, which has no classical half (it stands or falls with
// ML-KEM alone; CNSA 2.0 asks for it).
func IsPostQuantum(g tls.CurveID) bool {
	return IsHybrid(g) || g == tls.MLKEM1024
}

// GroupName is the standard name of g, as it appears in logs and metrics.
func GroupName(g tls.CurveID) string {
	switch g {
	case 0:
		return "none"
	case tls.CurveP256:
		return "P-256"
	case tls.CurveP384:
		return "P-384"
	case tls.CurveP521:
		return "P-521"
	case 30: // offered by OpenSSL; crypto/tls has no name for these
		return "X448"
	case 256, 257, 258, 259, 260:
		return fmt.Sprintf("ffdhe%d", []int{2048, 3072, 4096, 6144, 8192}[g-256])
	}
	return g.String()
}

// GroupNames joins the names of gs with commas.
func GroupNames(gs []tls.CurveID) string {
	names := make([]string, len(gs))
	for i, g := range gs {
		names[i] = GroupName(g)
	}
	return strings.Join(names, ",")
}

// ParseGroups parses a group list: comma-separated standard names,
// case-insensitive. The list says which groups are offered and accepted,
// not in which order: crypto/tls applies its own preference among them
// (X25519MLKEM768, SecP256r1MLKEM768, SecP384r1MLKEM1024, MLKEM1024, then
// classical), so a narrower list is the way to force a group. An empty
// string yields the default list. In strict mode a classical group is an
// error; in prefer mode classical groups must come after every
// post-quantum one.
func ParseGroups(s string, mode PQMode) ([]tls.CurveID, error) {
	if strings.TrimSpace(s) == "" {
		return append([]tls.CurveID(nil), DefaultGroups...), nil
	}
	var out []tls.CurveID
	seen := map[tls.CurveID]bool{}
	sawClassical := false
	for _, f := range strings.Split(s, ",") {
		name := strings.TrimSpace(f)
		if name == "" {
			return nil, errors.New("empty group name in list")
		}
		g, ok := groupByName[strings.ToLower(name)]
		if !ok {
			return nil, fmt.Errorf("unknown group %q (valid: X25519MLKEM768, SecP256r1MLKEM768, SecP384r1MLKEM1024, pure post-quantum MLKEM1024; classical X25519, P-256, P-384, P-521 only in %s mode)", name, Prefer)
		}
		if seen[g] {
			return nil, fmt.Errorf("group %s listed twice", GroupName(g))
		}
		seen[g] = true
		if !IsPostQuantum(g) {
			if mode == Strict {
				return nil, &ClassicalGroupError{Group: g}
			}
			sawClassical = true
		} else if sawClassical {
			return nil, fmt.Errorf("post-quantum group %s listed after a classical one: list post-quantum groups first", GroupName(g))
		}
		out = append(out, g)
	}
	return out, nil
}

// ClassicalGroupError is a classical group in a Strict group list. It is
// typed so that a caller can phrase the fix in its own settings' names.
type ClassicalGroupError struct {
	Group tls.CurveID
}

func (e *ClassicalGroupError) Error() string {
	return fmt.Sprintf("classical group %s is not allowed in %s mode: it has no post-quantum protection", GroupName(e.Group), Strict)
}

// ErrNotPostQuantum reports a handshake refused because the peer could not
// agree on a hybrid post-quantum key exchange.
var ErrNotPostQuantum error = auth.NewRefusal("not_post_quantum", "peer offered no post-quantum key exchange")

// CheckGroup enforces the policy on a negotiated group: defence in depth after
// the handshake, in case the TLS stack ever negotiated something it should not.
func CheckGroup(g tls.CurveID, mode PQMode, allowed []tls.CurveID) error {
	return checkGroup(g, mode, allowed, Setting.String)
}

// checkGroup is CheckGroup with the group list named by name.
func checkGroup(g tls.CurveID, mode PQMode, allowed []tls.CurveID, name func(Setting) string) error {
	for _, a := range allowed {
		if a == g {
			if !IsPostQuantum(g) && mode == Strict {
				break
			}
			return nil
		}
	}
	if mode == Prefer && g == tls.X25519 {
		return nil
	}
	if !IsPostQuantum(g) {
		return fmt.Errorf("%w: negotiated %s", ErrNotPostQuantum, GroupName(g))
	}
	return fmt.Errorf("negotiated group %s is not in %s (%s)", GroupName(g), name(SettingGroups), GroupNames(allowed))
}

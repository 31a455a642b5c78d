package proxy

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/wire"
)

// Route binds a route name to an address: where clients connect (forward)
// or where streams are delivered (target).
type Route struct {
	// Name is "" for the single unnamed route.
	Name string
	Addr string
	// Allow names the peers that may use the route (forward: whose tunnels
	// carry it; target: who may open streams to it); empty allows every
	// accepted peer.
	Allow []string
}

func (r Route) String() string {
	s := r.Addr
	if len(r.Allow) > 0 {
		s += "@" + strings.Join(r.Allow, "+")
	}
	if r.Name == "" {
		return s
	}
	return r.Name + "=" + s
}

// allows reports whether the peer of that name may use the route.
func (r Route) allows(peer string) bool {
	return len(r.Allow) == 0 || slices.Contains(r.Allow, peer)
}

// ParseRoutes parses "host:port" (one unnamed route) or
// "name=host:port,name=host:port", each address optionally followed by
// "@peer+peer", the peers allowed on the route.
func ParseRoutes(s string) ([]Route, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out []Route
	seen := map[string]bool{}
	fields := strings.Split(s, ",")
	for _, f := range fields {
		f = strings.TrimSpace(f)
		var r Route
		if name, addr, ok := strings.Cut(f, "="); ok {
			r = Route{Name: strings.TrimSpace(name), Addr: strings.TrimSpace(addr)}
			if r.Name == "" {
				return nil, fmt.Errorf("route %q: empty name before '='", f)
			}
			if len(r.Name) > wire.MaxField || strings.ContainsAny(r.Name, " \t:/") {
				return nil, fmt.Errorf("route %q: name must be at most %d characters without spaces, ':' or '/'", f, wire.MaxField)
			}
		} else {
			if len(fields) > 1 {
				return nil, fmt.Errorf("route %q has no name: with several routes each needs name=host:port", f)
			}
			r = Route{Addr: f}
		}
		if addr, allow, ok := strings.Cut(r.Addr, "@"); ok {
			r.Addr = strings.TrimSpace(addr)
			for _, p := range strings.Split(allow, "+") {
				p = strings.TrimSpace(p)
				if err := hybridtls.CheckPeerName(p); err != nil {
					return nil, fmt.Errorf("route %q: after '@': %w", f, err)
				}
				if !slices.Contains(r.Allow, p) {
					r.Allow = append(r.Allow, p)
				}
			}
		}
		if err := CheckHostPort(r.Addr); err != nil {
			return nil, fmt.Errorf("route %q: %w", f, err)
		}
		if seen[r.Name] {
			return nil, fmt.Errorf("route %q is named twice", r.Name)
		}
		seen[r.Name] = true
		out = append(out, r)
	}
	return out, nil
}

// CheckHostPort accepts host:port with a port number from 0 to 65535.
func CheckHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port: %w", err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// routeName is how logs show a route; the unnamed route is "default".
func routeName(name string) string {
	if name == "" {
		return "default"
	}
	return name
}

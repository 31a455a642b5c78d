package proxy

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/wire"
)

// Scheme is how a route's address is spoken to: plain TCP, TLS with a
// standard client or server on the other end, or a Unix stream socket.
type Scheme string

const (
	// SchemeTCP is a plain TCP host:port, written without a scheme.
	SchemeTCP Scheme = ""
	// SchemeTLS is tls://host:port: a forward route terminates TLS 1.3 from
	// standard clients, a target route originates TLS 1.3 to a standard server.
	SchemeTLS Scheme = "tls"
	// SchemeUnix is unix:///absolute/path: a forward route listens on a Unix
	// stream socket at that path, a target route connects to one.
	SchemeUnix Scheme = "unix"
)

// maxUnixPath is the longest socket path every platform binds: sun_path
// holds 104 bytes on the BSDs and macOS (108 on Linux), with a final NUL.
const maxUnixPath = 103

// schemes are the schemes a route address may name, each with the check of
// the address after "scheme://".
var schemes = map[Scheme]func(string) error{
	SchemeTLS:  checkTLSAddr,
	SchemeUnix: checkUnixAddr,
}

// checkTLSAddr accepts host:port; a host name has no '/'.
func checkTLSAddr(addr string) error {
	if strings.Contains(addr, "/") {
		return fmt.Errorf("want tls://host:port, not %q after tls://", addr)
	}
	return CheckHostPort(addr)
}

// unixForm is how a unix:// route is written on this platform: Windows
// (10 and later have AF_UNIX) names sockets by drive-letter paths.
func unixForm() string {
	if runtime.GOOS == "windows" {
		return `unix://C:\absolute\path`
	}
	return "unix:///absolute/path"
}

// checkUnixAddr accepts an absolute path that fits in a socket address.
// Abstract sockets (@name) are not routes: '@' starts the allow list. A
// path starting with two slashes is refused: a host part on Unix, a
// network share on Windows, where AF_UNIX does not reach.
func checkUnixAddr(path string) error {
	switch {
	case !filepath.IsAbs(path) || strings.HasPrefix(path, "//") || strings.HasPrefix(path, `\\`):
		return fmt.Errorf("want %s, not %q after unix://", unixForm(), path)
	case len(path) > maxUnixPath:
		return fmt.Errorf("socket path of %d bytes, at most %d fit in a socket address", len(path), maxUnixPath)
	case strings.ContainsRune(path, 0):
		return errors.New("socket path contains a NUL byte")
	}
	return nil
}

// Route binds a route name to an address: where clients connect (forward)
// or where streams are delivered (target).
type Route struct {
	// Name is "" for the single unnamed route.
	Name string
	// Kind is the route kind whose streams the route carries (see
	// package route); the zero value is wire.KindTCP.
	Kind wire.Kind
	// Scheme is SchemeTCP for a plain host:port.
	Scheme Scheme
	// Addr is the address without its scheme: host:port, or a socket path.
	Addr string
	// Allow names the peers that may use the route (forward: whose tunnels
	// carry it; target: who may open streams to it); empty allows every
	// accepted peer.
	Allow []string
	// ALPN are the application protocols a TLS route offers or accepts, in
	// order; none when empty (PQT_TLS_ALPN).
	ALPN []string
	// ServerName is the name a TLS target's certificate must carry, also
	// sent as SNI; empty means the host of Addr (PQT_TLS_SERVER_NAME).
	ServerName string
}

// IsTLS reports whether the route speaks TLS to a standard client or server.
func (r Route) IsTLS() bool { return r.Scheme == SchemeTLS }

// IsUnix reports whether the route's address is a Unix socket path.
func (r Route) IsUnix() bool { return r.Scheme == SchemeUnix }

// network is the route's address family for net.Dial and net.Listen.
func (r Route) network() string {
	if r.IsUnix() {
		return "unix"
	}
	return "tcp"
}

// String is the route as ParseRoutes reads it. ALPN and ServerName come
// from other settings and are not part of it.
func (r Route) String() string {
	s := r.Addr
	if r.Scheme != SchemeTCP {
		s = string(r.Scheme) + "://" + s
	}
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
// "name=host:port,name=host:port", each address optionally written
// "tls://host:port" or "unix:///path" and followed by "@peer+peer", the peers allowed on
// the route.
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
				if err := auth.CheckPeerName(p); err != nil {
					return nil, fmt.Errorf("route %q: after '@': %w", f, err)
				}
				if !slices.Contains(r.Allow, p) {
					r.Allow = append(r.Allow, p)
				}
			}
		}
		check := CheckHostPort
		if scheme, rest, ok := strings.Cut(r.Addr, "://"); ok {
			r.Scheme, r.Addr = Scheme(strings.ToLower(scheme)), rest
			if check = schemes[r.Scheme]; check == nil || r.Scheme == SchemeTCP {
				return nil, fmt.Errorf("route %q: unknown scheme %q (want tls://, unix:// or none for plain TCP)", f, scheme)
			}
		}
		if err := check(r.Addr); err != nil {
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

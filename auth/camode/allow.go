package camode

import (
	"crypto/x509"
	"fmt"
	"strings"

	"github.com/pqtunnel/pqtunnel/auth"
)

// AllowRule accepts a CA-issued peer certificate by one of its names.
type AllowRule struct {
	// Name, if set, names the peers the rule accepts (for route allow lists
	// and logs) instead of their certificate's name.
	Name string
	// Kind is "dns", "uri" or "cn".
	Kind string
	// Value is the name; for dns a leading "*." matches one label.
	Value string
}

// ParseAllow parses a list of allow rules: comma-separated dns:NAME,
// uri:URI, cn:NAME, each optionally named as peer=dns:NAME.
func ParseAllow(s string) ([]AllowRule, error) {
	var out []AllowRule
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		kind, value, ok := strings.Cut(f, ":")
		// A name comes before the kind, so an '=' in a URI is never taken for one.
		name, kind, named := strings.Cut(kind, "=")
		if !named {
			name, kind = "", name
		}
		kind = strings.ToLower(kind)
		if !ok || value == "" || (kind != "dns" && kind != "uri" && kind != "cn") {
			return nil, fmt.Errorf("rule %q: want dns:NAME, uri:URI or cn:NAME, optionally after peer=", f)
		}
		if named {
			if err := auth.CheckPeerName(name); err != nil {
				return nil, fmt.Errorf("rule %q: %w (want peer=dns:NAME, uri:URI or cn:NAME)", f, err)
			}
		}
		out = append(out, AllowRule{Name: name, Kind: kind, Value: value})
	}
	return out, nil
}

func (r AllowRule) String() string {
	if r.Name != "" {
		return r.Name + "=" + r.Kind + ":" + r.Value
	}
	return r.Kind + ":" + r.Value
}

// Match reports whether the certificate carries the rule's name.
func (r AllowRule) Match(c *x509.Certificate) bool {
	switch r.Kind {
	case "cn":
		return c.Subject.CommonName == r.Value
	case "uri":
		for _, u := range c.URIs {
			if u.String() == r.Value {
				return true
			}
		}
	case "dns":
		for _, n := range c.DNSNames {
			if matchDNS(r.Value, n) {
				return true
			}
		}
	}
	return false
}

func matchDNS(pattern, name string) bool {
	pattern, name = strings.ToLower(pattern), strings.ToLower(name)
	if suffix, ok := strings.CutPrefix(pattern, "*."); ok {
		label, rest, found := strings.Cut(name, ".")
		return found && label != "" && rest == suffix
	}
	return pattern == name
}

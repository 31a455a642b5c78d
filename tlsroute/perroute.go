package tlsroute

import (
	"fmt"
	"strings"
)

// RouteValues are per-route settings of TLS routes, such as the ALPN
// protocols of each: Route is a route name ("" for the unnamed route) and
// Values its values in order.
type RouteValues struct {
	Route  string
	Values []string
}

// ParsePerRoute parses "name=v1+v2,name=v3": entries separated by ',' as
// routes are, each a route name, '=' and values separated by '+' (ALPN
// protocol IDs such as http/1.1 contain neither). An entry without '=' is
// for the unnamed route and must be the only entry. Values are 1 to 255
// bytes of printable ASCII other than ',', '+', '=' and space.
func ParsePerRoute(s string) ([]RouteValues, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	fields := strings.Split(s, ",")
	var out []RouteValues
	seen := map[string]bool{}
	for _, f := range fields {
		f = strings.TrimSpace(f)
		name, vals, named := strings.Cut(f, "=")
		if !named {
			if len(fields) > 1 {
				return nil, fmt.Errorf("entry %q has no route name: with several entries each needs name=value", f)
			}
			name, vals = "", f
		}
		name = strings.TrimSpace(name)
		if named && name == "" {
			return nil, fmt.Errorf("entry %q: empty route name before '='", f)
		}
		if seen[name] {
			return nil, fmt.Errorf("route %q is named twice", name)
		}
		seen[name] = true
		rv := RouteValues{Route: name}
		for _, v := range strings.Split(vals, "+") {
			v = strings.TrimSpace(v)
			if err := checkValue(v); err != nil {
				return nil, fmt.Errorf("entry %q: %w", f, err)
			}
			rv.Values = append(rv.Values, v)
		}
		out = append(out, rv)
	}
	return out, nil
}

func checkValue(v string) error {
	if v == "" || len(v) > 255 {
		return fmt.Errorf("value %q: want 1 to 255 characters", v)
	}
	for _, r := range v {
		if r <= ' ' || r > '~' || r == ',' || r == '+' || r == '=' {
			return fmt.Errorf("value %q: character %q is not allowed", v, r)
		}
	}
	return nil
}

// FormatPerRoute is the inverse of ParsePerRoute.
func FormatPerRoute(rvs []RouteValues) string {
	parts := make([]string, len(rvs))
	for i, rv := range rvs {
		v := strings.Join(rv.Values, "+")
		if rv.Route != "" {
			v = rv.Route + "=" + v
		}
		parts[i] = v
	}
	return strings.Join(parts, ",")
}

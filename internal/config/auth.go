package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/auth/camode"
	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/proxy"
)

// authModes are the authentication modes, one line each: the variables
// that select the mode, and its loader. Exactly one must be selected.
var authModes = []authMode{
	{variable: "PQT_IDENTITY", what: "a pinned identity", selected: (*Vars).pinnedSelected, load: (*Vars).loadPinned},
	{variable: "PQT_CERT", what: "CA mode", selected: (*Vars).caSelected, load: (*Vars).loadCA},
}

// authMode is one authentication mode as configured by the environment.
type authMode struct {
	// variable and what name the mode in the error that refuses two.
	variable, what string
	// selected reports whether any of the mode's variables is set.
	selected func(*Vars) bool
	// load builds the mode's Authenticator from the variables, reading
	// its files; every error names its variable.
	load func(*Vars) (auth.Authenticator, error)
}

// LoadAuth reads identity, certificates and pins again from the files
// the environment names, for a reload on SIGHUP; Parse has already loaded
// them once into Auth.
// It returns nil when this side has no tunnel (proxy.ModeLocal).
func (c *Config) LoadAuth() (auth.Authenticator, error) {
	if c.Auth == nil {
		return nil, nil
	}
	return c.vars.loadAuth()
}

// loadAuth builds the Authenticator of the one mode the variables select.
func (v *Vars) loadAuth() (auth.Authenticator, error) {
	var mode *authMode
	for i := range authModes {
		if !authModes[i].selected(v) {
			continue
		}
		if mode != nil {
			return nil, fmt.Errorf("%s and %s: both %s and %s are configured; use one", mode.variable, authModes[i].variable, mode.what, authModes[i].what)
		}
		mode = &authModes[i]
	}
	if mode == nil {
		return nil, errors.New("PQT_IDENTITY: no identity configured: create one with 'pqtunnel keygen -o FILE' and set PQT_IDENTITY and PQT_PEERS, or use CA mode with PQT_CERT, PQT_KEY and PQT_CA")
	}
	a, err := mode.load(v)
	if err != nil {
		return nil, err
	}
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("PQT_IDENTITY: %w", err)
	}
	if v.Profile == ProfileCNSA2 {
		if err := a.CheckMLDSA87(); err != nil {
			if pe, ok := errors.AsType[*auth.ProfileError](err); ok {
				return nil, &rephrased{err: pe, msg: fmt.Sprintf("%s: %s; %s needs %s (%s)", authSettingName(pe.Setting), pe.Have, authSettingName(auth.SettingProfile), pe.Need, pe.Fix)}
			}
			return nil, fmt.Errorf("%s: %w", Name("Profile"), err)
		}
	}
	return a, nil
}

// checkAllowNames refuses a route allow list naming a peer the
// authenticator does not define, most likely a typing error that would
// lock the peer out.
func checkAllowNames(a auth.Authenticator, routes []proxy.Route, variable string) error {
	defines := authSettingName(a.PeerSet().Setting)
	for _, r := range routes {
		for _, p := range r.Allow {
			if !a.Defines(p) {
				return fmt.Errorf("%s: route %q: peer %q after '@' is not a name %s defines", variable, r.String(), p, defines)
			}
		}
	}
	return nil
}

// pinnedSelected reports whether the variables configure a pinned identity.
func (v *Vars) pinnedSelected() bool { return v.Identity != "" || v.IdentityPEM != "" }

// caSelected reports whether the variables configure CA mode.
func (v *Vars) caSelected() bool { return v.Cert != "" || v.Key != "" || v.CA != "" }

func (v *Vars) loadPinned() (auth.Authenticator, error) {
	if v.Identity != "" && v.IdentityPEM != "" {
		return nil, errors.New("PQT_IDENTITY and PQT_IDENTITY_PEM: both are set; use one")
	}
	m := &pinned.Authenticator{}
	var err error
	if v.Identity != "" {
		if m.Identity, err = pinned.LoadIdentityFile(v.Identity); err != nil {
			return nil, fmt.Errorf("PQT_IDENTITY: %w", err)
		}
	} else if m.Identity, err = pinned.ParseIdentityPEM([]byte(v.IdentityPEM)); err != nil {
		return nil, fmt.Errorf("PQT_IDENTITY_PEM: %w", err)
	}
	var files int
	if m.Peers, m.Names, files, err = readPeers(v.Peers); err != nil {
		return nil, fmt.Errorf("PQT_PEERS: %w", err)
	}
	if len(m.Peers) == 0 && files == 0 {
		return nil, errors.New("PQT_PEERS: not set: list the pin of each peer this side accepts (print it with 'pqtunnel pin FILE' on the peer)")
	}
	if v.Allow != "" {
		return nil, errors.New("PQT_ALLOW: applies to CA mode only; with pinned identities PQT_PEERS says who is allowed")
	}
	return m, nil
}

func (v *Vars) loadCA() (auth.Authenticator, error) {
	if v.Peers != "" {
		return nil, errors.New("PQT_PEERS: applies to pinned identities only; in CA mode use PQT_ALLOW")
	}
	for _, f := range []struct{ name, val string }{{"PQT_CERT", v.Cert}, {"PQT_KEY", v.Key}, {"PQT_CA", v.CA}} {
		if f.val == "" {
			return nil, fmt.Errorf("%s: not set: CA mode needs PQT_CERT, PQT_KEY and PQT_CA", f.name)
		}
	}
	if err := auth.CheckKeyFileMode(v.Key); err != nil {
		return nil, fmt.Errorf("PQT_KEY: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(v.Cert, v.Key)
	if err != nil {
		return nil, fmt.Errorf("PQT_CERT/PQT_KEY: %w", err)
	}
	m := &camode.Authenticator{Certificate: &cert, CAs: x509.NewCertPool()}
	if err := auth.CheckTrustFileMode(v.CA, "CA bundle"); err != nil {
		return nil, fmt.Errorf("PQT_CA: %w", err)
	}
	caPEM, err := os.ReadFile(v.CA)
	if err != nil {
		return nil, fmt.Errorf("PQT_CA: %w", err)
	}
	if !m.CAs.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("PQT_CA: %s holds no PEM certificate", v.CA)
	}
	var files int
	if m.Allow, files, err = readAllow(v.Allow); err != nil {
		return nil, fmt.Errorf("PQT_ALLOW: %w", err)
	}
	m.AllowListed = files > 0
	return m, nil
}

// readAllow parses PQT_ALLOW: rules, and files of rules (one or more per
// line, comma-separated, '#' comments) named by entries that start with '/'
// or '.', re-read on SIGHUP. files counts the files read: a rule list that
// comes from files and is empty accepts nobody.
func readAllow(s string) (rules []camode.AllowRule, files int, err error) {
	var inline []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !strings.HasPrefix(f, "/") && !strings.HasPrefix(f, ".") {
			inline = append(inline, f)
			continue
		}
		if err := auth.CheckTrustFileMode(f, "allow file"); err != nil {
			return nil, 0, err
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, 0, fmt.Errorf("allow file: %w", err)
		}
		files++
		for i, line := range strings.Split(string(data), "\n") {
			line, _, _ = strings.Cut(line, "#")
			rs, err := camode.ParseAllow(line)
			if err != nil {
				return nil, 0, fmt.Errorf("allow file %s line %d: %w", f, i+1, err)
			}
			rules = append(rules, rs...)
		}
	}
	rs, err := camode.ParseAllow(strings.Join(inline, ","))
	if err != nil {
		return nil, 0, err
	}
	return append(rs, rules...), files, nil
}

// readPeers parses PQT_PEERS: pins, each optionally named (app1=pqt1_…),
// and files of pins (one per line, optionally "app1 pqt1_…", '#' comments)
// named by entries that start with '/' or '.'. files counts the files read:
// an empty file is valid and accepts nobody.
func readPeers(s string) (pins []pinned.Pin, names map[pinned.Pin]string, files int, err error) {
	names = map[pinned.Pin]string{}
	byName := map[string]pinned.Pin{}
	add := func(entry, name, pin string) error {
		p, err := pinned.ParsePin(pin)
		if err != nil {
			return fmt.Errorf("%q: %w", entry, err)
		}
		if slices.Contains(pins, p) {
			if name != "" && names[p] != name {
				return fmt.Errorf("%q: pin %s is listed twice under different names", entry, p)
			}
			return nil // the same pin again changes nothing
		}
		if name != "" {
			if err := auth.CheckPeerName(name); err != nil {
				return fmt.Errorf("%q: %w", entry, err)
			}
			if _, dup := byName[name]; dup {
				return fmt.Errorf("%q: name %s is given to two pins", entry, name)
			}
			byName[name] = p
			names[p] = name
		}
		pins = append(pins, p)
		return nil
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.HasPrefix(f, "/") && !strings.HasPrefix(f, ".") {
			name, pin, ok := strings.Cut(f, "=")
			if !ok {
				name, pin = "", f
			}
			if err := add(f, strings.TrimSpace(name), pin); err != nil {
				return nil, nil, 0, err
			}
			continue
		}
		if err := auth.CheckTrustFileMode(f, "pins file"); err != nil {
			return nil, nil, 0, err
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("pins file: %w", err)
		}
		files++
		for i, line := range strings.Split(string(data), "\n") {
			line, _, _ = strings.Cut(line, "#")
			fields := strings.Fields(strings.Replace(line, "=", " ", 1))
			var err error
			switch len(fields) {
			case 0:
				continue
			case 1:
				err = add(fields[0], "", fields[0])
			case 2:
				err = add(strings.TrimSpace(line), fields[0], fields[1])
			default:
				err = fmt.Errorf("%q: want a pin or NAME PIN", strings.TrimSpace(line))
			}
			if err != nil {
				return nil, nil, 0, fmt.Errorf("pins file %s line %d: %w", f, i+1, err)
			}
		}
	}
	return pins, names, files, nil
}

// EmptyPeerSetWarning is the warning logged when setting, the one that
// lists the peers, accepts nobody; empty for a setting that lists no peers.
// Each is a constant message: operators and tests match it.
func EmptyPeerSetWarning(setting auth.Setting) string {
	switch setting {
	case auth.SettingPeers:
		return "PQT_PEERS lists no peer: every peer is refused and live tunnels are closed"
	case auth.SettingAllow:
		return "PQT_ALLOW lists no rule: every peer is refused and live tunnels are closed"
	}
	return ""
}

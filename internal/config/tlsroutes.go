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
	"github.com/pqtunnel/pqtunnel/proxy"
	"github.com/pqtunnel/pqtunnel/tlsroute"
)

// parseTLSRoutes applies PQT_TLS_ALPN and PQT_TLS_SERVER_NAME to the
// tls:// routes and loads the material of PQT_TLS_*.
func (c *Config) parseTLSRoutes(v *Vars) error {
	e := &c.Engine
	alpn, err := tlsroute.ParsePerRoute(v.TLSALPN)
	if err != nil {
		return fmt.Errorf("PQT_TLS_ALPN: %w", err)
	}
	for _, rv := range alpn {
		n := 0
		for _, routes := range [][]proxy.Route{e.Forward, e.Target} {
			for i := range routes {
				if routes[i].Name == rv.Route && routes[i].IsTLS() {
					routes[i].ALPN = rv.Values
					n++
				}
			}
		}
		if n == 0 {
			return fmt.Errorf("PQT_TLS_ALPN: route %q is not a tls:// route of PQT_FORWARD or PQT_TARGET", routeLabel(rv.Route))
		}
	}
	names, err := tlsroute.ParsePerRoute(v.TLSServerName)
	if err != nil {
		return fmt.Errorf("PQT_TLS_SERVER_NAME: %w", err)
	}
	for _, rv := range names {
		i := slices.IndexFunc(e.Target, func(r proxy.Route) bool { return r.Name == rv.Route && r.IsTLS() })
		if i < 0 {
			return fmt.Errorf("PQT_TLS_SERVER_NAME: route %q is not a tls:// route of PQT_TARGET", routeLabel(rv.Route))
		}
		if len(rv.Values) != 1 {
			return fmt.Errorf("PQT_TLS_SERVER_NAME: route %q: want one name, not %d", routeLabel(rv.Route), len(rv.Values))
		}
		e.Target[i].ServerName = rv.Values[0]
	}
	if !slices.ContainsFunc(e.Forward, proxy.Route.IsTLS) && !slices.ContainsFunc(e.Target, proxy.Route.IsTLS) {
		for _, f := range []struct{ name, val string }{{"PQT_TLS_CERT", v.TLSCert}, {"PQT_TLS_KEY", v.TLSKey}, {"PQT_TLS_CLIENT_CA", v.TLSClientCA}, {"PQT_TLS_ALLOW", v.TLSAllow}, {"PQT_TLS_CA", v.TLSCA}} {
			if f.val != "" {
				return fmt.Errorf("%s: set, but no route of PQT_FORWARD or PQT_TARGET is tls://", f.name)
			}
		}
		return nil
	}
	m, err := v.loadTLSMaterial(e.Forward)
	if err != nil {
		return err
	}
	c.TLSMaterial = m
	return nil
}

func routeLabel(name string) string {
	if name == "" {
		return "default"
	}
	return name
}

// checkNoTunnelMaterial refuses tunnel settings on a side that has no
// tunnel, most likely a route name that was meant to differ.
func (v *Vars) checkNoTunnelMaterial(forward, target []proxy.Route) error {
	for _, rs := range []struct {
		name   string
		routes []proxy.Route
	}{{"PQT_FORWARD", forward}, {"PQT_TARGET", target}} {
		for _, r := range rs.routes {
			if len(r.Allow) > 0 {
				return fmt.Errorf("%s: route %q: '@' names tunnel peers, but every route joins a route of the same name on this side, so there is no tunnel", rs.name, r.String())
			}
		}
	}
	for _, f := range []struct{ name, val string }{{"PQT_IDENTITY", v.Identity}, {"PQT_IDENTITY_PEM", v.IdentityPEM}, {"PQT_PEERS", v.Peers}, {"PQT_CERT", v.Cert}, {"PQT_KEY", v.Key}, {"PQT_CA", v.CA}, {"PQT_ALLOW", v.Allow}} {
		if f.val != "" {
			return fmt.Errorf("%s: set, but every route joins a route of the same name on this side, so there is no tunnel (set PQT_MODE and PQT_TUNNEL for one)", f.name)
		}
	}
	return nil
}

// LoadTLSMaterial reads the certificates and CA bundles of PQT_TLS_* again,
// for a reload on SIGHUP; nil when no route is tls://.
func (c *Config) LoadTLSMaterial() (*tlsroute.Material, error) {
	if c.TLSMaterial == nil {
		return nil, nil
	}
	return c.vars.loadTLSMaterial(c.Engine.Forward)
}

func (v *Vars) loadTLSMaterial(forward []proxy.Route) (*tlsroute.Material, error) {
	m := &tlsroute.Material{}
	certs, keys := splitList(v.TLSCert), splitList(v.TLSKey)
	terminates := slices.ContainsFunc(forward, proxy.Route.IsTLS)
	switch {
	case terminates && len(certs) == 0:
		return nil, errors.New("PQT_TLS_CERT: not set: a tls:// route of PQT_FORWARD needs a certificate and its key (PQT_TLS_KEY)")
	case !terminates && (len(certs) > 0 || len(keys) > 0 || v.TLSClientCA != "" || v.TLSAllow != ""):
		return nil, errors.New("PQT_TLS_CERT, PQT_TLS_KEY, PQT_TLS_CLIENT_CA, PQT_TLS_ALLOW: set, but no route of PQT_FORWARD is tls://")
	case len(certs) != len(keys):
		return nil, fmt.Errorf("PQT_TLS_KEY: %d keys for %d certificates in PQT_TLS_CERT: list one key per certificate, in the same order", len(keys), len(certs))
	}
	for i := range certs {
		if err := auth.CheckKeyFileMode(keys[i]); err != nil {
			return nil, fmt.Errorf("PQT_TLS_KEY: %w", err)
		}
		cert, err := tls.LoadX509KeyPair(certs[i], keys[i])
		if err != nil {
			return nil, fmt.Errorf("PQT_TLS_CERT/PQT_TLS_KEY: %s and %s: %w", certs[i], keys[i], err)
		}
		m.Certificates = append(m.Certificates, cert)
	}
	var err error
	if v.TLSClientCA != "" {
		if m.ClientCAs, err = readPool(v.TLSClientCA, "client CA bundle"); err != nil {
			return nil, fmt.Errorf("PQT_TLS_CLIENT_CA: %w", err)
		}
	}
	if m.ClientAllow, err = camode.ParseAllow(v.TLSAllow); err != nil {
		return nil, fmt.Errorf("PQT_TLS_ALLOW: %w", err)
	}
	if len(m.ClientAllow) > 0 && m.ClientCAs == nil {
		return nil, errors.New("PQT_TLS_ALLOW: needs PQT_TLS_CLIENT_CA, the CA that signs the client certificates it names")
	}
	if v.TLSCA != "" {
		if m.RootCAs, err = readPool(v.TLSCA, "CA bundle"); err != nil {
			return nil, fmt.Errorf("PQT_TLS_CA: %w", err)
		}
	}
	return m, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// readPool reads a CA bundle of a tls:// route. It is trust material like
// PQT_CA: whoever can change it chooses which clients or servers are
// accepted, so it gets the same permission check.
func readPool(path, what string) (*x509.CertPool, error) {
	if err := auth.CheckTrustFileMode(path, what); err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return p, nil
}

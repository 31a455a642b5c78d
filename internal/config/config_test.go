package config

import (
	"crypto/mldsa"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth"
	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/proxy"
)

// testEnv is a valid listen-side environment with a keygen-written identity.
type testEnv struct {
	base     map[string]string
	dir      string
	identity string // path of the identity file
	peerPin  string
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	dir := t.TempDir()
	identity := filepath.Join(dir, "listen.id")
	writeIdentity(t, identity)
	peerPin := writeIdentity(t, filepath.Join(dir, "dial.id"))
	return &testEnv{
		dir: dir, identity: identity, peerPin: peerPin,
		base: map[string]string{
			"PQT_MODE":     "listen",
			"PQT_TUNNEL":   "127.0.0.1:8443",
			"PQT_TARGET":   "127.0.0.1:6379",
			"PQT_IDENTITY": identity,
			"PQT_PEERS":    peerPin,
		},
	}
}

func TestParseConfigValid(t *testing.T) {
	te := newTestEnv(t)
	pem, err := os.ReadFile(te.identity)
	if err != nil {
		t.Fatal(err)
	}
	pinsFile := filepath.Join(te.dir, "peers.txt")
	if err := os.WriteFile(pinsFile, []byte("# the dial side\n"+te.peerPin+"\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		set   map[string]string
		unset []string
	}{
		{name: "listen"},
		{name: "dial with named forwards and two peers", set: map[string]string{
			"PQT_MODE": "dial", "PQT_TUNNEL": "peer.example:8443, 10.0.0.2:8443",
			"PQT_FORWARD": "redis=127.0.0.1:6379,pg=127.0.0.1:5432",
		}, unset: []string{"PQT_TARGET"}},
		{name: "identity as PEM text", set: map[string]string{"PQT_IDENTITY_PEM": string(pem)}, unset: []string{"PQT_IDENTITY"}},
		{name: "peers from a file", set: map[string]string{"PQT_PEERS": pinsFile}},
		{name: "prefer with classical group last", set: map[string]string{"PQT_PQ": "prefer", "PQT_GROUPS": "X25519MLKEM768,X25519"}},
		{name: "durations and limits", set: map[string]string{
			"PQT_HANDSHAKE_TIMEOUT": "2s", "PQT_KEEPALIVE": "1s", "PQT_IDLE_TIMEOUT": "3s", "PQT_MAX_STREAMS": "10",
		}},
		{name: "tcp transport, json logs", set: map[string]string{"PQT_TRANSPORT": "tcp", "PQT_LOG_FORMAT": "json", "PQT_LOG_LEVEL": "debug"}},
		{name: "pq authentication required", set: map[string]string{"PQT_AUTH": "pq"}},
		{name: "unix routes, mode and group", set: map[string]string{
			"PQT_MODE": "dial", "PQT_TUNNEL": "peer.example:8443",
			"PQT_FORWARD": "app=unix:///run/pqtunnel/app.sock", "PQT_UNIX_MODE": "0600", "PQT_UNIX_GROUP": "app",
		}, unset: []string{"PQT_TARGET"}},
		{name: "keep-alive probes off", set: map[string]string{"PQT_KEEPALIVE_TIMEOUT": "0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			environ := maps.Clone(te.base)
			maps.Copy(environ, tt.set)
			for _, k := range tt.unset {
				delete(environ, k)
			}
			c, err := Parse(environ)
			if err != nil {
				t.Fatalf("parseConfig: %v", err)
			}
			m := c.Auth.(*pinned.Authenticator)
			if len(m.Peers) != 1 || m.Peers[0].String() != te.peerPin {
				t.Errorf("peers = %v, want [%s]", m.Peers, te.peerPin)
			}
		})
	}
}

func TestParseConfigDefaults(t *testing.T) {
	te := newTestEnv(t)
	c, err := Parse(te.base)
	if err != nil {
		t.Fatal(err)
	}
	// Every envDefault tag is what an unset variable becomes.
	cv, ct := reflect.ValueOf(c.vars), reflect.TypeFor[Vars]()
	for i := range ct.NumField() {
		f := ct.Field(i)
		def, ok := f.Tag.Lookup("envDefault")
		if !ok {
			continue
		}
		if got := cv.Field(i).Interface(); got != defaultValue(t, got, def) {
			t.Errorf("%s defaults to %v, tag says %q", f.Tag.Get("env"), got, def)
		}
	}
	if c.Engine.UnixSocketMode != 0o660 || c.Engine.UnixSocketGroup != "" {
		t.Errorf("unix socket mode %o, group %q; want 0660 and the process's", c.Engine.UnixSocketMode, c.Engine.UnixSocketGroup)
	}
	if c.Policy.Mode != hybridtls.Strict || c.Engine.Transport.Name() != "auto" {
		t.Errorf("PQ %q, transport %q; want strict, auto", c.Policy.Mode, c.Engine.Transport.Name())
	}
}

func TestAccessLogSetting(t *testing.T) {
	te := newTestEnv(t)
	for _, tt := range []struct {
		value string
		want  bool
	}{{"", false}, {"off", false}, {"on", true}, {"ON", true}} {
		environ := maps.Clone(te.base)
		if tt.value != "" {
			environ["PQT_ACCESS_LOG"] = tt.value
		}
		c, err := Parse(environ)
		if err != nil {
			t.Fatalf("PQT_ACCESS_LOG=%q: %v", tt.value, err)
		}
		if c.Engine.AccessLog != tt.want {
			t.Errorf("PQT_ACCESS_LOG=%q: engine AccessLog %t, want %t", tt.value, c.Engine.AccessLog, tt.want)
		}
	}
}

func TestParseConfigErrorsNameTheVariable(t *testing.T) {
	te := newTestEnv(t)
	open := filepath.Join(te.dir, "open.id")
	writeIdentity(t, open)
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		set   map[string]string
		unset []string
		want  string   // the error starts with this
		also  []string // and contains these
	}{
		{name: "mode missing", unset: []string{"PQT_MODE"}, want: "PQT_MODE", also: []string{"listen or dial"}},
		{name: "mode bad", set: map[string]string{"PQT_MODE": "server"}, want: "PQT_MODE", also: []string{`"server"`}},
		{name: "tunnel missing", unset: []string{"PQT_TUNNEL"}, want: "PQT_TUNNEL"},
		{name: "tunnel bad port", set: map[string]string{"PQT_TUNNEL": "127.0.0.1:70000"}, want: "PQT_TUNNEL", also: []string{"65535"}},
		{name: "tunnel no port", set: map[string]string{"PQT_TUNNEL": "127.0.0.1"}, want: "PQT_TUNNEL"},
		{name: "listen on two addresses", set: map[string]string{"PQT_TUNNEL": "127.0.0.1:1,127.0.0.1:2"}, want: "PQT_TUNNEL"},
		{name: "forward bad", set: map[string]string{"PQT_FORWARD": "redis=127.0.0.1"}, want: "PQT_FORWARD", also: []string{"redis"}},
		{name: "forward unnamed in list", set: map[string]string{"PQT_FORWARD": "a=127.0.0.1:1,127.0.0.1:2"}, want: "PQT_FORWARD"},
		{name: "target bad", set: map[string]string{"PQT_TARGET": "db=db.internal:postgres"}, want: "PQT_TARGET"},
		{name: "nothing to carry", unset: []string{"PQT_TARGET"}, want: "PQT_FORWARD and PQT_TARGET"},
		{name: "transport bad", set: map[string]string{"PQT_TRANSPORT": "udp"}, want: "PQT_TRANSPORT", also: []string{`"udp"`}},
		{name: "pq bad", set: map[string]string{"PQT_PQ": "maybe"}, want: "PQT_PQ", also: []string{"strict or prefer"}},
		{name: "classical group in strict", set: map[string]string{"PQT_GROUPS": "X25519MLKEM768,X25519"}, want: "PQT_GROUPS", also: []string{"PQT_PQ=strict"}},
		{name: "unknown group", set: map[string]string{"PQT_GROUPS": "kyber"}, want: "PQT_GROUPS"},
		{name: "handshake timeout not a duration", set: map[string]string{"PQT_HANDSHAKE_TIMEOUT": "abc"}, want: "PQT_HANDSHAKE_TIMEOUT"},
		{name: "handshake timeout zero", set: map[string]string{"PQT_HANDSHAKE_TIMEOUT": "0s"}, want: "PQT_HANDSHAKE_TIMEOUT"},
		{name: "dial timeout negative", set: map[string]string{"PQT_DIAL_TIMEOUT": "-1s"}, want: "PQT_DIAL_TIMEOUT"},
		{name: "drain timeout not a duration", set: map[string]string{"PQT_DRAIN_TIMEOUT": "soon"}, want: "PQT_DRAIN_TIMEOUT"},
		{name: "connections not a number", set: map[string]string{"PQT_CONNECTIONS": "two"}, want: "PQT_CONNECTIONS"},
		{name: "connections zero", set: map[string]string{"PQT_CONNECTIONS": "0"}, want: "PQT_CONNECTIONS"},
		{name: "max streams negative", set: map[string]string{"PQT_MAX_STREAMS": "-1"}, want: "PQT_MAX_STREAMS"},
		{name: "conn memory below 1MiB", set: map[string]string{"PQT_MAX_CONN_MEMORY": "512KiB"}, want: "PQT_MAX_CONN_MEMORY", also: []string{"1MiB"}},
		{name: "conn memory without a unit we know", set: map[string]string{"PQT_MAX_CONN_MEMORY": "64MB"}, want: "PQT_MAX_CONN_MEMORY", also: []string{"KiB, MiB or GiB"}},
		{name: "keepalive timeout negative", set: map[string]string{"PQT_KEEPALIVE_TIMEOUT": "-1s"}, want: "PQT_KEEPALIVE_TIMEOUT"},
		{name: "congestion control not offered", set: map[string]string{"PQT_TCP_CONGESTION": "no-such-cc"}, want: "PQT_TCP_CONGESTION", also: []string{"no-such-cc"}},
		{name: "keepalive not below idle", set: map[string]string{"PQT_KEEPALIVE": "10s", "PQT_IDLE_TIMEOUT": "10s"}, want: "PQT_KEEPALIVE", also: []string{"PQT_IDLE_TIMEOUT"}},
		{name: "metrics bad", set: map[string]string{"PQT_METRICS": "localhost:metrics"}, want: "PQT_METRICS"},
		{name: "proxy protocol bad", set: map[string]string{"PQT_PROXY_PROTOCOL": "v3"}, want: "PQT_PROXY_PROTOCOL"},
		{name: "unix mode not octal", set: map[string]string{"PQT_UNIX_MODE": "0698"}, want: "PQT_UNIX_MODE"},
		{name: "unix mode too wide", set: map[string]string{"PQT_UNIX_MODE": "4770"}, want: "PQT_UNIX_MODE"},
		{name: "unix mode zero", set: map[string]string{"PQT_UNIX_MODE": "0"}, want: "PQT_UNIX_MODE"},
		{name: "unix route relative", set: map[string]string{"PQT_TARGET": "a=unix://run/a.sock"}, want: "PQT_TARGET"},
		{name: "access log bad", set: map[string]string{"PQT_ACCESS_LOG": "yes"}, want: "PQT_ACCESS_LOG"},
		{name: "log level bad", set: map[string]string{"PQT_LOG_LEVEL": "loud"}, want: "PQT_LOG_LEVEL"},
		{name: "log format bad", set: map[string]string{"PQT_LOG_FORMAT": "xml"}, want: "PQT_LOG_FORMAT"},
		{name: "auth bad", set: map[string]string{"PQT_AUTH": "mldsa"}, want: "PQT_AUTH"},
		{name: "two authentication modes", set: map[string]string{"PQT_CERT": "/etc/pqt/cert.pem"}, want: "PQT_IDENTITY and PQT_CERT", also: []string{"both a pinned identity and CA mode", "use one"}},
		{name: "identity twice", set: map[string]string{"PQT_IDENTITY_PEM": "x"}, want: "PQT_IDENTITY and PQT_IDENTITY_PEM"},
		{name: "no authentication mode", unset: []string{"PQT_IDENTITY", "PQT_PEERS"}, want: "PQT_IDENTITY", also: []string{"no identity configured"}},
		{name: "profile bad", set: map[string]string{"PQT_PROFILE": "cnsa"}, want: "PQT_PROFILE"},
		{name: "cnsa2 with an ML-DSA-65 identity", set: map[string]string{"PQT_PROFILE": "cnsa2"}, want: "PQT_IDENTITY", also: []string{"ML-DSA-65", "keygen --profile cnsa2"}},
		{name: "cnsa2 with a hybrid group", set: map[string]string{"PQT_PROFILE": "cnsa2", "PQT_GROUPS": "SecP384r1MLKEM1024"}, want: "PQT_GROUPS", also: []string{"MLKEM1024 only"}},
		{name: "cnsa2 with prefer", set: map[string]string{"PQT_PROFILE": "cnsa2", "PQT_PQ": "prefer"}, want: "PQT_PQ"},
		{name: "cnsa2 with a key log", set: map[string]string{"PQT_PROFILE": "cnsa2", "PQT_KEYLOG": "/tmp/keys"}, want: "PQT_KEYLOG"},
		{name: "identity missing", unset: []string{"PQT_IDENTITY"}, want: "PQT_IDENTITY", also: []string{"pqtunnel keygen"}},
		{name: "identity file missing", set: map[string]string{"PQT_IDENTITY": filepath.Join(te.dir, "nope.id")}, want: "PQT_IDENTITY"},
		{name: "identity mode 0644", set: map[string]string{"PQT_IDENTITY": open}, want: "PQT_IDENTITY", also: []string{"chmod 600"}},
		{name: "identity file and PEM", set: map[string]string{"PQT_IDENTITY_PEM": "x"}, want: "PQT_IDENTITY"},
		{name: "identity PEM garbage", set: map[string]string{"PQT_IDENTITY_PEM": "garbage"}, unset: []string{"PQT_IDENTITY"}, want: "PQT_IDENTITY_PEM"},
		{name: "peers missing", unset: []string{"PQT_PEERS"}, want: "PQT_PEERS", also: []string{"pqtunnel pin"}},
		{name: "peers bad", set: map[string]string{"PQT_PEERS": "pqt1_nope"}, want: "PQT_PEERS"},
		{name: "peers bad name", set: map[string]string{"PQT_PEERS": "app 1=" + te.peerPin}, want: "PQT_PEERS", also: []string{"peer name"}},
		{name: "peers one pin two names", set: map[string]string{"PQT_PEERS": "a=" + te.peerPin + ",b=" + te.peerPin}, want: "PQT_PEERS", also: []string{"different names"}},
		{name: "target allows an undefined peer", set: map[string]string{"PQT_PEERS": "app1=" + te.peerPin, "PQT_TARGET": "redis=127.0.0.1:6379@app1+app2"}, want: "PQT_TARGET", also: []string{`"app2"`, "PQT_PEERS"}},
		{name: "forward allows an undefined peer", set: map[string]string{"PQT_FORWARD": "web=127.0.0.1:80@origin-a"}, want: "PQT_FORWARD", also: []string{`"origin-a"`}},
		{name: "route allow list bad", set: map[string]string{"PQT_TARGET": "redis=127.0.0.1:6379@"}, want: "PQT_TARGET", also: []string{"after '@'"}},
		{name: "peers file missing", set: map[string]string{"PQT_PEERS": filepath.Join(te.dir, "nope.txt")}, want: "PQT_PEERS"},
		{name: "allow with pins", set: map[string]string{"PQT_ALLOW": "dns:x"}, want: "PQT_ALLOW"},
		{name: "pins and CA mode", set: map[string]string{"PQT_CERT": "/x.pem"}, want: "PQT_IDENTITY and PQT_CERT"},
		{name: "CA mode without key", set: map[string]string{"PQT_CERT": "/x.pem", "PQT_CA": "/ca.pem"}, unset: []string{"PQT_IDENTITY", "PQT_PEERS"}, want: "PQT_KEY"},
		{name: "CA mode with peers", set: map[string]string{"PQT_CERT": "/x.pem"}, unset: []string{"PQT_IDENTITY"}, want: "PQT_PEERS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			environ := maps.Clone(te.base)
			maps.Copy(environ, tt.set)
			for _, k := range tt.unset {
				delete(environ, k)
			}
			c, err := Parse(environ)
			if err == nil {
				t.Fatalf("parseConfig succeeded: %+v", c)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error %q does not start with %q", err, tt.want)
			}
			for _, a := range tt.also {
				if !strings.Contains(err.Error(), a) {
					t.Errorf("error %q does not contain %q", err, a)
				}
			}
		})
	}
}

func TestMaterialLoadsIdentityAndPins(t *testing.T) {
	te := newTestEnv(t)
	c, err := Parse(te.base)
	if err != nil {
		t.Fatal(err)
	}
	m, pinnedMode := c.Auth.(*pinned.Authenticator)
	want, err := pinned.LoadIdentityFile(te.identity)
	if err != nil {
		t.Fatal(err)
	}
	if !pinnedMode || m.Identity.Pin != want.Pin {
		t.Errorf("material identity %v, want pin %s", m.Identity, want.Pin)
	}
	if err := m.Validate(); err != nil {
		t.Errorf("material does not validate: %v", err)
	}
}

// TestNamedPeers reads names from PQT_PEERS and from a pins file, keeps a
// bare pin named by itself, and takes an empty pins file as accepting nobody.
func TestNamedPeers(t *testing.T) {
	te := newTestEnv(t)
	other := writeIdentity(t, filepath.Join(te.dir, "other.id"))
	third := writeIdentity(t, filepath.Join(te.dir, "third.id"))
	pinsFile := filepath.Join(te.dir, "peers.txt")
	if err := os.WriteFile(pinsFile, []byte("# named and bare\napp2 "+other+"  # the second\n"+third+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	environ := maps.Clone(te.base)
	environ["PQT_PEERS"] = "app1=" + te.peerPin + "," + pinsFile
	environ["PQT_TARGET"] = "redis=127.0.0.1:6379@app1+app2,pg=127.0.0.1:5432@" + third
	c, err := Parse(environ)
	if err != nil {
		t.Fatal(err)
	}
	m := c.Auth.(*pinned.Authenticator)
	for pin, want := range map[string]string{te.peerPin: "app1", other: "app2", third: third} {
		p, err := pinned.ParsePin(pin)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.PeerName(p); got != want {
			t.Errorf("pin %s named %q, want %q", pin, got, want)
		}
	}
	if got := c.Engine.Target[0].Allow; !reflect.DeepEqual(got, []string{"app1", "app2"}) {
		t.Errorf("redis allows %v, want app1 and app2", got)
	}

	empty := filepath.Join(te.dir, "empty.txt")
	if err := os.WriteFile(empty, []byte("# nobody for now\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	environ = maps.Clone(te.base)
	environ["PQT_PEERS"] = empty
	c, err = Parse(environ)
	if err != nil {
		t.Fatalf("an empty pins file: %v", err)
	}
	if n := len(c.Auth.(*pinned.Authenticator).Peers); n != 0 {
		t.Errorf("an empty pins file accepts %d peers", n)
	}
}

// FuzzReadPeers parses PQT_PEERS without files and checks that writing
// the result back as name=pin entries reads the same.
func FuzzReadPeers(f *testing.F) {
	id, err := pinned.GenerateIdentity()
	if err != nil {
		f.Fatal(err)
	}
	pin := id.Pin.String()
	f.Add("app1=" + pin)
	f.Add(pin)
	f.Add(" a = " + pin + " , " + pin)
	f.Add("a=b=" + pin)
	f.Fuzz(func(t *testing.T, s string) {
		if strings.Contains(s, "/") || strings.Contains(s, ".") {
			return // file names: not read here
		}
		pins, names, _, err := readPeers(s)
		if err != nil {
			return
		}
		var entries []string
		for _, p := range pins {
			if n, ok := names[p]; ok {
				entries = append(entries, n+"="+p.String())
			} else {
				entries = append(entries, p.String())
			}
		}
		again, againNames, _, err := readPeers(strings.Join(entries, ","))
		if err != nil {
			t.Fatalf("re-read of %q: %v", strings.Join(entries, ","), err)
		}
		if !reflect.DeepEqual(again, pins) || !maps.Equal(againNames, names) {
			t.Fatalf("round trip %v %v -> %v %v", pins, names, again, againNames)
		}
	})
}

// writeIdentity writes a new identity file with mode 0600, as keygen does,
// and returns its pin.
func writeIdentity(t *testing.T, path string) string {
	t.Helper()
	id, err := pinned.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	data, err := id.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return id.Pin.String()
}

// A library's typed error comes back naming the variable behind the field,
// still wrapping the library's error.
func TestExplainNamesTheVariable(t *testing.T) {
	inUse := errors.New("address already in use")
	for field, name := range map[string]string{"Forward": "PQT_FORWARD", "Tunnel": "PQT_TUNNEL"} {
		err := Explain(&proxy.ConfigError{Field: field, Err: fmt.Errorf("route web: %w", inUse)})
		if want := name + ": route web: address already in use"; err.Error() != want {
			t.Errorf("Explain(%s) = %q, want %q", field, err, want)
		}
		if !errors.Is(err, inUse) {
			t.Errorf("Explain(%s) lost the wrapped error", field)
		}
	}
	other := errors.New("other")
	if Explain(other) != other {
		t.Error("Explain changed an error it does not know")
	}
}

// A refused handshake names the variable to change: the Policy that Parse
// builds names each hybridtls setting by its variable.
func TestPolicyNamesSettingsByVariable(t *testing.T) {
	c, err := Parse(newTestEnv(t).base)
	if err != nil {
		t.Fatal(err)
	}
	want := map[hybridtls.Setting]string{hybridtls.SettingGroups: "PQT_GROUPS", hybridtls.SettingMode: "PQT_PQ"}
	for s, name := range want {
		if got := c.Policy.SettingName(s); got != name {
			t.Errorf("SettingName(%s) = %q, want %q", s, got, name)
		}
	}
	wantAuth := map[auth.Setting]string{auth.SettingCAs: "PQT_CA", auth.SettingPeers: "PQT_PEERS", auth.SettingAllow: "PQT_ALLOW"}
	for s, name := range wantAuth {
		if got := c.Policy.Auth.SettingName(s); got != name {
			t.Errorf("Auth.SettingName(%s) = %q, want %q", s, got, name)
		}
	}
}

func TestCNSA2Profile(t *testing.T) {
	te := newTestEnv(t)
	id87 := filepath.Join(te.dir, "cnsa2.id")
	id, err := pinned.GenerateIdentityFor(mldsa.MLDSA87())
	if err != nil {
		t.Fatal(err)
	}
	data, err := id.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(id87, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, groups := range []string{"", "mlkem1024"} {
		environ := maps.Clone(te.base)
		environ["PQT_IDENTITY"], environ["PQT_PROFILE"] = id87, "cnsa2"
		if groups != "" {
			environ["PQT_GROUPS"] = groups
		}
		c, err := Parse(environ)
		if err != nil {
			t.Fatalf("PQT_GROUPS=%q: Parse: %v", groups, err)
		}
		p := c.Policy
		if hybridtls.GroupNames(p.Groups) != "MLKEM1024" || !p.Auth.RequirePQAuth || !p.Auth.RequireMLDSA87 || c.KeyLog != "" {
			t.Errorf("PQT_GROUPS=%q: cnsa2 policy = groups %s, RequirePQAuth %v, RequireMLDSA87 %v, key log %q",
				groups, hybridtls.GroupNames(p.Groups), p.Auth.RequirePQAuth, p.Auth.RequireMLDSA87, c.KeyLog)
		}
	}
}

// PQT_MAX_CONN_MEMORY reaches the transport as bytes, and its default is
// the library's.
func TestMaxConnMemoryReachesTheTransport(t *testing.T) {
	te := newTestEnv(t)
	for _, tc := range []struct {
		set  string
		want int
	}{{"", 256 << 20}, {"8MiB", 8 << 20}, {"1GiB", 1 << 30}} {
		environ := maps.Clone(te.base)
		if tc.set != "" {
			environ["PQT_MAX_CONN_MEMORY"] = tc.set
		}
		c, err := Parse(environ)
		if err != nil {
			t.Fatalf("PQT_MAX_CONN_MEMORY=%q: %v", tc.set, err)
		}
		if got := c.Engine.Mux.MaxConnMemory; got != tc.want {
			t.Errorf("PQT_MAX_CONN_MEMORY=%q: transport gets %d, want %d", tc.set, got, tc.want)
		}
	}
}

// The engine's runtime messages name its Config fields through
// engineSettingName: each field it names is the variable that sets it.
func TestEngineSettingNameGivesTheVariable(t *testing.T) {
	for field, want := range map[string]string{
		"MaxConnections": "PQT_MAX_CONNECTIONS", "PeerShare": "PQT_MAX_PEER_SHARE", "MaxTotalStreams": "PQT_MAX_TOTAL_STREAMS",
		"MaxConnMemory": "PQT_MAX_CONN_MEMORY", "Target": "PQT_TARGET", "StreamIdleTimeout": "PQT_STREAM_IDLE_TIMEOUT",
		"MaxClientsPerIP": "PQT_MAX_CLIENTS_PER_IP", "MaxHandshakes": "PQT_MAX_HANDSHAKES", "MaxStreams": "PQT_MAX_STREAMS",
		"Transport": "PQT_TRANSPORT", "Peers": "PQT_PEERS", "Allow": "PQT_ALLOW", "CA": "PQT_CA", "Cert": "PQT_CERT", // named by check's advice
		"HandshakeLog": "HandshakeLog", // no variable sets it
	} {
		if got := engineSettingName(field); got != want {
			t.Errorf("engineSettingName(%q) = %q, want %q", field, got, want)
		}
	}
	c, err := Parse(newTestEnv(t).base)
	if err != nil {
		t.Fatal(err)
	}
	if c.Engine.SettingName == nil || c.Engine.SettingName("Target") != "PQT_TARGET" {
		t.Error("the parsed engine configuration does not name its settings by their variables")
	}
}

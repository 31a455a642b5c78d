package proxy

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/wire"
)

func TestParseRoutes(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []Route
		wantErr string // substring of the error
	}{
		{name: "empty", in: ""},
		{name: "blank", in: "  "},
		{name: "single unnamed", in: "127.0.0.1:6379", want: []Route{{Addr: "127.0.0.1:6379"}}},
		{name: "single unnamed trimmed", in: " 127.0.0.1:6379\t", want: []Route{{Addr: "127.0.0.1:6379"}}},
		{name: "unnamed any host", in: ":8080", want: []Route{{Addr: ":8080"}}},
		{name: "unnamed IPv6", in: "[::1]:5432", want: []Route{{Addr: "[::1]:5432"}}},
		{name: "single named", in: "redis=127.0.0.1:6379", want: []Route{{Name: "redis", Addr: "127.0.0.1:6379"}}},
		{name: "named list", in: "redis=127.0.0.1:6379,pg=db.internal:5432",
			want: []Route{{Name: "redis", Addr: "127.0.0.1:6379"}, {Name: "pg", Addr: "db.internal:5432"}}},
		{name: "named list with spaces", in: " redis = 127.0.0.1:6379 , pg=[::1]:5432 ",
			want: []Route{{Name: "redis", Addr: "127.0.0.1:6379"}, {Name: "pg", Addr: "[::1]:5432"}}},
		{name: "port zero", in: "a=127.0.0.1:0", want: []Route{{Name: "a", Addr: "127.0.0.1:0"}}},
		{name: "port 65535", in: "127.0.0.1:65535", want: []Route{{Addr: "127.0.0.1:65535"}}},
		{name: "unnamed in a list", in: "redis=127.0.0.1:6379,127.0.0.1:5432", wantErr: "has no name"},
		{name: "two unnamed", in: "127.0.0.1:1,127.0.0.1:2", wantErr: "has no name"},
		{name: "trailing comma", in: "a=127.0.0.1:1,", wantErr: "has no name"},
		{name: "duplicate names", in: "a=127.0.0.1:1,b=127.0.0.1:2,a=127.0.0.1:3", wantErr: `"a" is named twice`},
		{name: "duplicate after trim", in: "a=127.0.0.1:1, a =127.0.0.1:3", wantErr: "named twice"},
		{name: "port too big", in: "a=127.0.0.1:65536", wantErr: "65535"},
		{name: "port not a number", in: "127.0.0.1:redis", wantErr: "not a number"},
		{name: "negative port", in: "127.0.0.1:-1", wantErr: "not a number"},
		{name: "missing port", in: "a=127.0.0.1", wantErr: "host:port"},
		{name: "empty address", in: "a=", wantErr: "host:port"},
		{name: "allow list", in: "redis=127.0.0.1:6379@app1+app2,pg=127.0.0.1:5432@app2",
			want: []Route{{Name: "redis", Addr: "127.0.0.1:6379", Allow: []string{"app1", "app2"}}, {Name: "pg", Addr: "127.0.0.1:5432", Allow: []string{"app2"}}}},
		{name: "allow list unnamed IPv6", in: "[::1]:80 @ origin-a", want: []Route{{Addr: "[::1]:80", Allow: []string{"origin-a"}}}},
		{name: "allow list repeated peer", in: "a=127.0.0.1:1@x+x", want: []Route{{Name: "a", Addr: "127.0.0.1:1", Allow: []string{"x"}}}},
		{name: "empty allow list", in: "a=127.0.0.1:1@", wantErr: "after '@'"},
		{name: "empty peer in allow list", in: "a=127.0.0.1:1@x++y", wantErr: "after '@'"},
		{name: "two @", in: "a=127.0.0.1:1@x@y", wantErr: "after '@'"},
		{name: "empty name", in: "=127.0.0.1:1", wantErr: "empty name"},
		{name: "blank name", in: " =127.0.0.1:1", wantErr: "empty name"},
		{name: "name with space", in: "my route=127.0.0.1:1", wantErr: "without spaces"},
		{name: "name with colon", in: "a:b=127.0.0.1:1", wantErr: "without spaces"},
		{name: "name with slash", in: "a/b=127.0.0.1:1", wantErr: "without spaces"},
		{name: "tls forward", in: "web=tls://0.0.0.0:8443", want: []Route{{Name: "web", Scheme: SchemeTLS, Addr: "0.0.0.0:8443"}}},
		{name: "tls unnamed upper case", in: "TLS://[::1]:443", want: []Route{{Scheme: SchemeTLS, Addr: "[::1]:443"}}},
		{name: "tls and plain with allow list", in: "api=tls://api.example.com:443@app1,pg=127.0.0.1:5432",
			want: []Route{{Name: "api", Scheme: SchemeTLS, Addr: "api.example.com:443", Allow: []string{"app1"}}, {Name: "pg", Addr: "127.0.0.1:5432"}}},
		{name: "unknown scheme", in: "a=udp://127.0.0.1:1", wantErr: `unknown scheme "udp"`},
		{name: "empty scheme", in: "a=://127.0.0.1:1", wantErr: "unknown scheme"},
		{name: "tls without port", in: "a=tls://example.com", wantErr: "host:port"},
		{name: "tls twice", in: "a=tls://tls://h:1", wantErr: "after tls://"},
		{name: "tls with a path", in: "a=tls://h:1/x", wantErr: "after tls://"},
		{name: "unix target", in: "app=unix:///run/app.sock", want: []Route{{Name: "app", Scheme: SchemeUnix, Addr: "/run/app.sock"}}},
		{name: "unix unnamed upper case", in: "UNIX:///run/app.sock", want: []Route{{Scheme: SchemeUnix, Addr: "/run/app.sock"}}},
		{name: "unix named with allow list", in: "app=unix:///run/pqt/app.sock@web+db",
			want: []Route{{Name: "app", Scheme: SchemeUnix, Addr: "/run/pqt/app.sock", Allow: []string{"web", "db"}}}},
		{name: "unix relative path", in: "a=unix://run/app.sock", wantErr: "unix:///absolute/path"},
		{name: "unix host form", in: "a=unix:////run/app.sock", wantErr: "unix:///absolute/path"},
		{name: "unix empty path", in: "a=unix://", wantErr: "unix:///absolute/path"},
		{name: "unix abstract", in: "a=unix://@name", wantErr: "unix:///absolute/path"},
		{name: "unix path too long", in: "a=unix:///" + strings.Repeat("p", maxUnixPath), wantErr: "at most 103"},
		{name: "unix path longest", in: "a=unix:///" + strings.Repeat("p", maxUnixPath-1), want: []Route{{Name: "a", Scheme: SchemeUnix, Addr: "/" + strings.Repeat("p", maxUnixPath-1)}}},
		{name: "unix NUL", in: "a=unix:///x\x00y", wantErr: "NUL"},
		{name: "name too long", in: strings.Repeat("n", 256) + "=127.0.0.1:1", wantErr: "at most 255"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRoutes(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseRoutes(%q) = %v, want an error", tt.in, got)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("ParseRoutes(%q) error %q does not contain %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRoutes(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseRoutes(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestRouteStringAndName(t *testing.T) {
	if s := (Route{Addr: "h:1"}).String(); s != "h:1" {
		t.Errorf("unnamed route String = %q", s)
	}
	if s := (Route{Name: "n", Addr: "h:1"}).String(); s != "n=h:1" {
		t.Errorf("named route String = %q", s)
	}
	if s := (Route{Name: "n", Scheme: SchemeTLS, Addr: "h:1", Allow: []string{"a"}}).String(); s != "n=tls://h:1@a" {
		t.Errorf("TLS route String = %q", s)
	}
	if s := (Route{Name: "n", Scheme: SchemeUnix, Addr: "/run/a.sock"}).String(); s != "n=unix:///run/a.sock" {
		t.Errorf("Unix route String = %q", s)
	}
	if routeName("") != "default" || routeName("x") != "x" {
		t.Error("routeName does not call the unnamed route default")
	}
}

func FuzzParseRoutes(f *testing.F) {
	f.Add("127.0.0.1:6379")
	f.Add("redis=127.0.0.1:6379,pg=db.internal:5432")
	f.Add(" a = [::1]:1 , b=:2")
	f.Add("a=127.0.0.1:1,127.0.0.1:2")
	f.Add("a=b=c:1")
	f.Add("=:")
	f.Add("redis=127.0.0.1:6379@app1+app2,pg=127.0.0.1:5432@app2")
	f.Add("[::1]:80@origin-a")
	f.Add(Route{Name: "web", Scheme: SchemeTLS, Addr: "0.0.0.0:8443", Allow: []string{"a"}}.String() + "," + Route{Name: "pg", Addr: ":1"}.String())
	f.Add("TLS://h:1")
	f.Add(Route{Name: "app", Scheme: SchemeUnix, Addr: "/run/app.sock", Allow: []string{"a", "b"}}.String() + "," + Route{Name: "t", Scheme: SchemeTLS, Addr: ":1"}.String())
	f.Add("unix://relative")
	f.Fuzz(func(t *testing.T, s string) {
		routes, err := ParseRoutes(s)
		if err != nil {
			return
		}
		texts := make([]string, len(routes))
		names := map[string]bool{}
		for i, r := range routes {
			if names[r.Name] {
				t.Fatalf("ParseRoutes(%q) = %v names %q twice", s, routes, r.Name)
			}
			names[r.Name] = true
			if r.Name == "" && len(routes) > 1 {
				t.Fatalf("ParseRoutes(%q) = %v has an unnamed route in a list", s, routes)
			}
			if len(r.Name) > wire.MaxField {
				t.Fatalf("route name of %d bytes cannot go in a preamble", len(r.Name))
			}
			check := CheckHostPort
			if r.Scheme != SchemeTCP {
				check = schemes[r.Scheme]
			}
			if err := check(r.Addr); err != nil {
				t.Fatalf("ParseRoutes(%q) accepted %s address %q: %v", s, r.Scheme, r.Addr, err)
			}
			if _, err := wire.AppendRequest(nil, wire.Request{Route: r.Name}); err != nil {
				t.Fatalf("route name %q cannot be sent: %v", r.Name, err)
			}
			texts[i] = r.String()
		}
		again, err := ParseRoutes(strings.Join(texts, ","))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", strings.Join(texts, ","), err)
		}
		if !slices.EqualFunc(again, routes, func(a, b Route) bool {
			return a.Name == b.Name && a.Scheme == b.Scheme && a.Addr == b.Addr && slices.Equal(a.Allow, b.Allow)
		}) {
			t.Fatalf("round trip %v -> %v", routes, again)
		}
	})
}

func TestLocalJoins(t *testing.T) {
	plain := func(n string) Route { return Route{Name: n, Addr: "127.0.0.1:1"} }
	tlsR := func(n string) Route { return Route{Name: n, Scheme: SchemeTLS, Addr: "127.0.0.1:2"} }
	for _, tt := range []struct {
		name            string
		forward, target []Route
		joined          []string
		needsTunnel     bool
	}{
		{"plain and plain go through the tunnel", []Route{plain("a")}, []Route{plain("a")}, nil, true},
		{"terminate to a local plain target", []Route{tlsR("a")}, []Route{plain("a")}, []string{"a"}, false},
		{"plain to a local tls target", []Route{plain("a")}, []Route{tlsR("a")}, []string{"a"}, false},
		{"terminated route without a target of its name", []Route{tlsR("a")}, []Route{plain("b")}, nil, true},
		{"one joined, one through the tunnel", []Route{tlsR("a"), plain("b")}, []Route{plain("a")}, []string{"a"}, true},
		{"a target left for the peer", []Route{tlsR("a")}, []Route{plain("a"), plain("b")}, []string{"a"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j := LocalJoins(tt.forward, tt.target)
			var got []string
			for _, f := range tt.forward {
				if _, ok := j[f.Name]; ok {
					got = append(got, f.Name)
				}
			}
			if !slices.Equal(got, tt.joined) {
				t.Errorf("joined %v, want %v", got, tt.joined)
			}
			if n := NeedsTunnel(tt.forward, tt.target); n != tt.needsTunnel {
				t.Errorf("NeedsTunnel = %v, want %v", n, tt.needsTunnel)
			}
		})
	}
}

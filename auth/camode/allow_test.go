package camode

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth"
)

func TestParseAllow(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []AllowRule
		wantErr bool
	}{
		{name: "empty", in: ""},
		{name: "blank fields", in: " , ,"},
		{name: "dns", in: "dns:a.example.com", want: []AllowRule{{Kind: "dns", Value: "a.example.com"}}},
		{name: "kind case-insensitive", in: "DNS:*.example.com", want: []AllowRule{{Kind: "dns", Value: "*.example.com"}}},
		{name: "uri keeps its colons", in: "uri:spiffe://cluster.local/ns/x/sa/y", want: []AllowRule{{Kind: "uri", Value: "spiffe://cluster.local/ns/x/sa/y"}}},
		{name: "list with spaces", in: " dns:a , cn:Tunnel Peer ,uri:https://x/ ", want: []AllowRule{{Kind: "dns", Value: "a"}, {Kind: "cn", Value: "Tunnel Peer"}, {Kind: "uri", Value: "https://x/"}}},
		{name: "no kind", in: "example.com", wantErr: true},
		{name: "empty value", in: "dns:", wantErr: true},
		{name: "empty kind", in: ":example.com", wantErr: true},
		{name: "unknown kind", in: "ip:10.0.0.1", wantErr: true},
		{name: "one bad in list", in: "dns:a,email:x@y", wantErr: true},
		{name: "named", in: "web=dns:web.internal, jobs=uri:spiffe://corp/jobs?a=b", want: []AllowRule{{Name: "web", Kind: "dns", Value: "web.internal"}, {Name: "jobs", Kind: "uri", Value: "spiffe://corp/jobs?a=b"}}},
		{name: "empty name", in: "=dns:a", wantErr: true},
		{name: "bad name", in: "a b=dns:a", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAllow(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseAllow(%q) = %v, want an error", tt.in, got)
				}
				if !strings.Contains(err.Error(), "dns:NAME") {
					t.Errorf("error %q does not show the valid forms", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAllow(%q): %v", tt.in, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ParseAllow(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestAllowRuleMatch(t *testing.T) {
	cert := func(cn string, dns []string, uris ...string) *x509.Certificate {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns}
		for _, u := range uris {
			c.URIs = append(c.URIs, mustURL(t, u))
		}
		return c
	}
	tests := []struct {
		rule AllowRule
		cert *x509.Certificate
		want bool
	}{
		{AllowRule{Kind: "dns", Value: "a.example.com"}, cert("", []string{"a.example.com"}), true},
		{AllowRule{Kind: "dns", Value: "a.example.com"}, cert("", []string{"b.example.com", "A.Example.COM"}), true},
		{AllowRule{Kind: "dns", Value: "a.example.com"}, cert("a.example.com", nil), false}, // CN is not a DNS SAN
		{AllowRule{Kind: "dns", Value: "*.example.com"}, cert("", []string{"a.example.com"}), true},
		{AllowRule{Kind: "dns", Value: "*.Example.com"}, cert("", []string{"A.example.COM"}), true},
		{AllowRule{Kind: "dns", Value: "*.example.com"}, cert("", []string{"a.b.example.com"}), false},
		{AllowRule{Kind: "dns", Value: "*.example.com"}, cert("", []string{"example.com"}), false},
		{AllowRule{Kind: "dns", Value: "*.example.com"}, cert("", []string{".example.com"}), false},
		{AllowRule{Kind: "dns", Value: "*.example.com"}, cert("", []string{"a.example.org"}), false},
		{AllowRule{Kind: "dns", Value: "*.example.com"}, cert("", []string{"aexample.com"}), false},
		{AllowRule{Kind: "dns", Value: "*.example.com"}, cert("", nil), false},
		{AllowRule{Kind: "uri", Value: "spiffe://td/ns/a/sa/b"}, cert("", nil, "spiffe://td/ns/a/sa/b"), true},
		{AllowRule{Kind: "uri", Value: "spiffe://td/ns/a/sa/b"}, cert("", nil, "spiffe://td/ns/a/sa/c", "spiffe://td/ns/a/sa/b"), true},
		{AllowRule{Kind: "uri", Value: "spiffe://td/ns/a/sa/b"}, cert("", nil, "spiffe://td/ns/a/sa/bb"), false},
		{AllowRule{Kind: "uri", Value: "spiffe://td/ns/a/sa/b"}, cert("spiffe://td/ns/a/sa/b", []string{"spiffe://td/ns/a/sa/b"}), false},
		{AllowRule{Kind: "cn", Value: "peer one"}, cert("peer one", nil), true},
		{AllowRule{Kind: "cn", Value: "peer one"}, cert("Peer One", nil), false},
		{AllowRule{Kind: "cn", Value: "peer one"}, cert("", []string{"peer one"}), false},
		{AllowRule{Kind: "bogus", Value: "x"}, cert("x", []string{"x"}), false},
	}
	for _, tt := range tests {
		if got := tt.rule.Match(tt.cert); got != tt.want {
			t.Errorf("%s.Match(cn=%q dns=%v uris=%v) = %v, want %v", tt.rule, tt.cert.Subject.CommonName, tt.cert.DNSNames, tt.cert.URIs, got, tt.want)
		}
	}
}

func FuzzParseAllow(f *testing.F) {
	f.Add("dns:a.example.com,uri:spiffe://td/x,cn:peer")
	f.Add("DNS:*.example.com")
	f.Add(" , dns:x ,")
	f.Add("ip:1.2.3.4")
	f.Add("dns:")
	f.Add("web=dns:web.internal,jobs=uri:spiffe://corp/jobs?a=b")
	f.Add(AllowRule{Name: "x", Kind: "cn", Value: "a=b:c"}.String())
	f.Fuzz(func(t *testing.T, s string) {
		rules, err := ParseAllow(s)
		if err != nil {
			return
		}
		texts := make([]string, len(rules))
		for i, r := range rules {
			if r.Kind != "dns" && r.Kind != "uri" && r.Kind != "cn" {
				t.Fatalf("ParseAllow(%q) gave kind %q", s, r.Kind)
			}
			if r.Value == "" {
				t.Fatalf("ParseAllow(%q) gave an empty value", s)
			}
			if r.Name != "" && auth.CheckPeerName(r.Name) != nil {
				t.Fatalf("ParseAllow(%q) gave the invalid name %q", s, r.Name)
			}
			texts[i] = r.String()
		}
		again, err := ParseAllow(strings.Join(texts, ","))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", strings.Join(texts, ","), err)
		}
		if !slices.Equal(again, rules) {
			t.Fatalf("round trip %v -> %v", rules, again)
		}
		// Match must not panic on any rule against an empty or filled certificate.
		c := &x509.Certificate{DNSNames: []string{"a.example.com", ""}, URIs: []*url.URL{{Scheme: "x"}}}
		for _, r := range rules {
			_ = r.Match(c)
			_ = r.Match(&x509.Certificate{})
		}
	})
}

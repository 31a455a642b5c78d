package tlsroute

import (
	"reflect"
	"strings"
	"testing"
)

func TestParsePerRoute(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    []RouteValues
		wantErr string
	}{
		{in: ""},
		{in: "h2+http/1.1", want: []RouteValues{{Values: []string{"h2", "http/1.1"}}}},
		{in: "web=h2+http/1.1, api = http/1.1", want: []RouteValues{{Route: "web", Values: []string{"h2", "http/1.1"}}, {Route: "api", Values: []string{"http/1.1"}}}},
		{in: "api=api.example.com", want: []RouteValues{{Route: "api", Values: []string{"api.example.com"}}}},
		{in: "web=h2,h2", wantErr: "no route name"},
		{in: "web=h2,web=http/1.1", wantErr: "named twice"},
		{in: "=h2", wantErr: "empty route name"},
		{in: "web=", wantErr: "1 to 255"},
		{in: "web=h2++x", wantErr: "1 to 255"},
		{in: "web=a b", wantErr: "not allowed"},
		{in: "web=" + strings.Repeat("x", 256), wantErr: "1 to 255"},
	} {
		got, err := ParsePerRoute(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePerRoute(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParsePerRoute(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func FuzzParsePerRoute(f *testing.F) {
	f.Add(FormatPerRoute([]RouteValues{{Route: "web", Values: []string{"h2", "http/1.1"}}, {Route: "api", Values: []string{"http/1.1"}}}))
	f.Add(FormatPerRoute([]RouteValues{{Values: []string{"h2"}}}))
	f.Add("a=b=c,d")
	f.Fuzz(func(t *testing.T, s string) {
		rvs, err := ParsePerRoute(s)
		if err != nil {
			return
		}
		for _, rv := range rvs {
			for _, v := range rv.Values {
				if err := checkValue(v); err != nil {
					t.Fatalf("ParsePerRoute(%q) accepted %q: %v", s, v, err)
				}
			}
		}
		again, err := ParsePerRoute(FormatPerRoute(rvs))
		if err != nil || !reflect.DeepEqual(again, rvs) {
			t.Fatalf("round trip of %q: %v, %v; want %v", s, again, err, rvs)
		}
	})
}

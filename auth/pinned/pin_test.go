package pinned

import (
	"strings"
	"testing"
)

func TestPinStringParseRoundTrip(t *testing.T) {
	for range 20 {
		id := mustIdentity(t)
		s := id.Pin.String()
		if !strings.HasPrefix(s, "pqt1_") || len(s) != len("pqt1_")+52 {
			t.Fatalf("Pin.String() = %q, want pqt1_ and 52 letters", s)
		}
		if s != strings.ToLower(s) {
			t.Errorf("Pin.String() = %q is not lower case", s)
		}
		for _, in := range []string{s, "  " + s + "\n", strings.ToUpper(s)} {
			p, err := ParsePin(in)
			if err != nil {
				t.Fatalf("ParsePin(%q): %v", in, err)
			}
			if p != id.Pin {
				t.Fatalf("ParsePin(%q) = %s, want %s", in, p, id.Pin)
			}
		}
	}
}

func TestParsePinRejects(t *testing.T) {
	good := mustIdentity(t).Pin.String()
	body := strings.TrimPrefix(good, "pqt1_")
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "does not start with"},
		{"wrong prefix", "pqt2_" + body, "does not start with"},
		{"no prefix", body, "does not start with"},
		{"prefix only", "pqt1_", "malformed"},
		{"one letter short", good[:len(good)-1], "malformed"},
		{"one letter long", good + "a", "malformed"},
		{"eight letters long", good + "aaaaaaaa", "malformed"},
		{"bad base32 digit 1", good[:len(good)-1] + "1", "malformed"},
		{"bad base32 digit 0", "pqt1_0" + body[1:], "malformed"},
		{"padding", good + "====", "malformed"},
		{"inner space", good[:20] + " " + good[21:], "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePin(tt.in)
			if err == nil {
				t.Fatalf("ParsePin(%q) = %s, want an error", tt.in, p)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParsePin(%q) error %q does not contain %q", tt.in, err, tt.want)
			}
			if p != (Pin{}) {
				t.Errorf("ParsePin(%q) returned a non-zero pin with its error", tt.in)
			}
		})
	}
}

func TestParsePins(t *testing.T) {
	a, b := mustIdentity(t).Pin, mustIdentity(t).Pin
	tests := []struct {
		name    string
		in      string
		want    []Pin
		wantErr bool
	}{
		{name: "empty", in: ""},
		{name: "only separators", in: " , ,, "},
		{name: "one", in: a.String(), want: []Pin{a}},
		{name: "two", in: a.String() + "," + b.String(), want: []Pin{a, b}},
		{name: "spaces and empties", in: " ," + a.String() + " ,, \t" + b.String() + " ,", want: []Pin{a, b}},
		{name: "one bad", in: a.String() + ",pqt1_xyz", wantErr: true},
		{name: "space separated is one bad pin", in: a.String() + " " + b.String(), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePins(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParsePins(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePins(%q): %v", tt.in, err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("ParsePins(%q) = %d pins, want %d", tt.in, len(got), len(tt.want))
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("pin %d = %s, want %s", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func FuzzParsePin(f *testing.F) {
	for range 3 {
		f.Add(mustIdentity(f).Pin.String())
	}
	f.Add("")
	f.Add("pqt1_")
	f.Add("PQT1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("pqt1_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePin(s)
		if err != nil {
			if p != (Pin{}) {
				t.Fatalf("ParsePin(%q) returned a pin with its error", s)
			}
			return
		}
		text := p.String()
		if len(text) != len(pinPrefix)+52 {
			t.Fatalf("Pin.String() = %q has the wrong length", text)
		}
		p2, err := ParsePin(text)
		if err != nil {
			t.Fatalf("ParsePin(%q) of Pin.String(): %v", text, err)
		}
		if p2 != p {
			t.Fatalf("round trip changed the pin: %s -> %s", p, p2)
		}
		if _, err := ParsePins(s + "," + text); err != nil {
			t.Fatalf("ParsePins of two valid pins: %v", err)
		}
	})
}

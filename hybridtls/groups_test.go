package hybridtls

import (
	"crypto/tls"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParsePQMode(t *testing.T) {
	tests := []struct {
		in      string
		want    PQMode
		wantErr bool
	}{
		{in: "", want: Strict},
		{in: "strict", want: Strict},
		{in: "STRICT", want: Strict},
		{in: " prefer\n", want: Prefer},
		{in: "Prefer", want: Prefer},
		{in: "off", wantErr: true},
		{in: "strictly", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParsePQMode(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParsePQMode(%q) = %q, want an error", tt.in, got)
			} else if !strings.Contains(err.Error(), "strict or prefer") {
				t.Errorf("ParsePQMode(%q) error %q does not list the valid modes", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePQMode(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseGroups(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		mode    PQMode
		want    []tls.CurveID
		wantErr []string // substrings of the error
	}{
		{name: "empty is default", in: "", mode: Strict, want: DefaultGroups},
		{name: "blank is default", in: "  \t", mode: Prefer, want: DefaultGroups},
		{name: "one", in: "X25519MLKEM768", mode: Strict, want: []tls.CurveID{tls.X25519MLKEM768}},
		{name: "case-insensitive", in: "x25519mlkem768,SECP256R1MLKEM768, secp384r1MLKEM1024", mode: Strict,
			want: []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024}},
		{name: "order kept", in: "SecP384r1MLKEM1024,X25519MLKEM768", mode: Strict,
			want: []tls.CurveID{tls.SecP384r1MLKEM1024, tls.X25519MLKEM768}},
		{name: "pure MLKEM1024 in strict", in: "MLKEM1024", mode: Strict, want: []tls.CurveID{tls.MLKEM1024}},
		{name: "MLKEM1024 after a classical one in prefer", in: "X25519,mlkem1024", mode: Prefer,
			wantErr: []string{"MLKEM1024", "after a classical"}},
		{name: "unknown lists valid names", in: "X25519MLKEM768,kyber768", mode: Strict,
			wantErr: []string{`"kyber768"`, "X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024"}},
		{name: "classical in strict", in: "X25519MLKEM768,X25519", mode: Strict,
			wantErr: []string{"X25519", "strict mode"}},
		{name: "classical P-256 in strict", in: "p-256", mode: Strict,
			wantErr: []string{"P-256", "strict mode"}},
		{name: "classical after hybrid in prefer", in: "X25519MLKEM768,X25519,P-256", mode: Prefer,
			want: []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256}},
		{name: "classical only in prefer", in: "x25519", mode: Prefer, want: []tls.CurveID{tls.X25519}},
		{name: "classical before hybrid in prefer", in: "X25519,X25519MLKEM768", mode: Prefer,
			wantErr: []string{"X25519MLKEM768", "after a classical"}},
		{name: "duplicate", in: "X25519MLKEM768,x25519mlkem768", mode: Strict,
			wantErr: []string{"twice"}},
		{name: "duplicate through alias", in: "X25519MLKEM768,P-256,secp256r1", mode: Prefer,
			wantErr: []string{"P-256", "twice"}},
		{name: "empty name", in: "X25519MLKEM768,,SecP256r1MLKEM768", mode: Strict,
			wantErr: []string{"empty"}},
		{name: "trailing comma", in: "X25519MLKEM768,", mode: Strict,
			wantErr: []string{"empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseGroups(tt.in, tt.mode)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("ParseGroups(%q, %s) = %v, want an error", tt.in, tt.mode, got)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseGroups(%q, %s): %v", tt.in, tt.mode, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ParseGroups(%q, %s) = %s, want %s", tt.in, tt.mode, GroupNames(got), GroupNames(tt.want))
			}
		})
	}
}

func TestParseGroupsDefaultIsACopy(t *testing.T) {
	got, err := ParseGroups("", Strict)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(DefaultGroups)
	got[0] = tls.X25519
	if !slices.Equal(DefaultGroups, want) {
		t.Fatal("modifying ParseGroups' result changed DefaultGroups")
	}
}

func TestGroupNamesRoundTrip(t *testing.T) {
	all := []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024, tls.MLKEM1024, tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}
	got, err := ParseGroups(GroupNames(all), Prefer)
	if err != nil {
		t.Fatalf("ParseGroups(GroupNames(...)): %v", err)
	}
	if !slices.Equal(got, all) {
		t.Errorf("round trip = %s, want %s", GroupNames(got), GroupNames(all))
	}
	if GroupName(0) != "none" {
		t.Errorf("GroupName(0) = %q, want none", GroupName(0))
	}
}

func TestIsPostQuantum(t *testing.T) {
	if IsHybrid(tls.MLKEM1024) || !IsPostQuantum(tls.MLKEM1024) {
		t.Error("MLKEM1024 is post-quantum but not hybrid")
	}
	for _, g := range []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384} {
		if IsPostQuantum(g) {
			t.Errorf("IsPostQuantum(%s) = true", GroupName(g))
		}
	}
}

func TestIsHybrid(t *testing.T) {
	for _, g := range DefaultGroups {
		if !IsHybrid(g) {
			t.Errorf("IsHybrid(%s) = false", GroupName(g))
		}
	}
	for _, g := range []tls.CurveID{0, tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521} {
		if IsHybrid(g) {
			t.Errorf("IsHybrid(%s) = true", GroupName(g))
		}
	}
}

func TestCheckGroup(t *testing.T) {
	pqOnly := []tls.CurveID{tls.X25519MLKEM768}
	tests := []struct {
		name    string
		g       tls.CurveID
		mode    PQMode
		allowed []tls.CurveID
		wantErr bool
		notPQ   bool // the error must wrap ErrNotPostQuantum
	}{
		{name: "hybrid allowed strict", g: tls.X25519MLKEM768, mode: Strict, allowed: DefaultGroups},
		{name: "last hybrid allowed", g: tls.SecP384r1MLKEM1024, mode: Strict, allowed: DefaultGroups},
		{name: "hybrid allowed prefer", g: tls.SecP256r1MLKEM768, mode: Prefer, allowed: DefaultGroups},
		{name: "hybrid not in list", g: tls.SecP384r1MLKEM1024, mode: Strict, allowed: pqOnly, wantErr: true},
		{name: "X25519 strict", g: tls.X25519, mode: Strict, allowed: DefaultGroups, wantErr: true, notPQ: true},
		{name: "X25519 strict even if listed", g: tls.X25519, mode: Strict, allowed: []tls.CurveID{tls.X25519MLKEM768, tls.X25519}, wantErr: true, notPQ: true},
		{name: "X25519 prefer", g: tls.X25519, mode: Prefer, allowed: DefaultGroups},
		{name: "P-256 prefer listed", g: tls.CurveP256, mode: Prefer, allowed: []tls.CurveID{tls.X25519MLKEM768, tls.CurveP256}},
		{name: "P-256 prefer unlisted", g: tls.CurveP256, mode: Prefer, allowed: DefaultGroups, wantErr: true, notPQ: true},
		{name: "none strict", g: 0, mode: Strict, allowed: DefaultGroups, wantErr: true, notPQ: true},
		{name: "empty list", g: tls.X25519MLKEM768, mode: Strict, allowed: nil, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckGroup(tt.g, tt.mode, tt.allowed)
			if (err != nil) != tt.wantErr {
				t.Fatalf("CheckGroup(%s, %s, %s) = %v, want error %v", GroupName(tt.g), tt.mode, GroupNames(tt.allowed), err, tt.wantErr)
			}
			if err == nil {
				return
			}
			if errors.Is(err, ErrNotPostQuantum) != tt.notPQ {
				t.Errorf("errors.Is(%v, ErrNotPostQuantum) = %v, want %v", err, !tt.notPQ, tt.notPQ)
			}
			if !tt.notPQ && !strings.Contains(err.Error(), "is not in Groups") {
				t.Errorf("error %q does not name the Groups setting", err)
			}
		})
	}
}

func TestPolicyCurves(t *testing.T) {
	strict := Policy{Mode: Strict, Groups: DefaultGroups}
	if got := strict.Curves(); !slices.Equal(got, DefaultGroups) {
		t.Errorf("strict curves = %s, want %s", GroupNames(got), GroupNames(DefaultGroups))
	}
	prefer := Policy{Mode: Prefer, Groups: DefaultGroups}
	got := prefer.Curves()
	if want := append(slices.Clone(DefaultGroups), tls.X25519); !slices.Equal(got, want) {
		t.Errorf("prefer curves = %s, want %s", GroupNames(got), GroupNames(want))
	}
	if len(DefaultGroups) != 3 {
		t.Fatal("curves() modified DefaultGroups")
	}
	withX := Policy{Mode: Prefer, Groups: []tls.CurveID{tls.X25519MLKEM768, tls.X25519}}
	if got := withX.Curves(); len(got) != 2 {
		t.Errorf("prefer curves with X25519 listed = %s, want it once", GroupNames(got))
	}
}

func FuzzParseGroups(f *testing.F) {
	f.Add("", false)
	f.Add(GroupNames(DefaultGroups), false)
	f.Add("X25519MLKEM768,X25519", true)
	f.Add("X25519MLKEM768,X25519", false)
	f.Add("x25519,p-256,secp384r1,P521", true)
	f.Add("X25519MLKEM768,,", false)
	f.Fuzz(func(t *testing.T, s string, prefer bool) {
		mode := Strict
		if prefer {
			mode = Prefer
		}
		gs, err := ParseGroups(s, mode)
		if err != nil {
			if gs != nil {
				t.Fatalf("ParseGroups(%q) returned groups with an error", s)
			}
			return
		}
		if len(gs) == 0 {
			t.Fatalf("ParseGroups(%q) succeeded with no groups", s)
		}
		seen := map[tls.CurveID]bool{}
		sawClassical := false
		for _, g := range gs {
			if seen[g] {
				t.Fatalf("ParseGroups(%q) = %s lists a group twice", s, GroupNames(gs))
			}
			seen[g] = true
			if IsHybrid(g) {
				if sawClassical {
					t.Fatalf("ParseGroups(%q) = %s: hybrid after classical", s, GroupNames(gs))
				}
				continue
			}
			sawClassical = true
			if mode == Strict {
				t.Fatalf("ParseGroups(%q, strict) = %s includes a classical group", s, GroupNames(gs))
			}
		}
		again, err := ParseGroups(GroupNames(gs), mode)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", GroupNames(gs), err)
		}
		if !slices.Equal(again, gs) {
			t.Fatalf("round trip %s -> %s", GroupNames(gs), GroupNames(again))
		}
	})
}

func TestParseGroupsClassicalInStrictIsTyped(t *testing.T) {
	_, err := ParseGroups("X25519MLKEM768,P-384", Strict)
	var ce *ClassicalGroupError
	if !errors.As(err, &ce) || ce.Group != tls.CurveP384 {
		t.Fatalf("ParseGroups error %v, want a ClassicalGroupError for P-384", err)
	}
	if _, err := ParseGroups("X25519MLKEM768,P-384", Prefer); err != nil {
		t.Fatalf("the same list in prefer mode: %v", err)
	}
}

package config

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
)

// misspellings returns every name one edit from name's part after PQT_:
// each letter deleted, replaced by another, or swapped with the next. The
// prefix stays, since only PQT_* names are checked.
func misspellings(name string) []string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
	s := strings.TrimPrefix(name, prefix)
	set := map[string]bool{}
	for i := range len(s) {
		set[s[:i]+s[i+1:]] = true
		for _, c := range alphabet {
			set[s[:i]+string(c)+s[i+1:]] = true
		}
		if i+1 < len(s) {
			set[s[:i]+s[i+1:i+2]+s[i:i+1]+s[i+2:]] = true
		}
	}
	delete(set, s)
	var out []string
	for m := range set {
		out = append(out, prefix+m)
	}
	slices.Sort(out)
	return out
}

// Each variable's misspellings, one edit away, are reported with that
// variable among the suggestions; it is the only suggestion unless another
// variable is exactly as near (PQT_PA is one letter from PQT_CA and from
// PQT_PQ), and then every one suggested is that near.
func TestMisspeltVariablesSuggestTheIntendedOne(t *testing.T) {
	known := map[string]bool{}
	for _, v := range Variables() {
		known[v.Name] = true
	}
	checked, shared := 0, 0
	for _, v := range Variables() {
		for _, m := range misspellings(v.Name) {
			if known[m] {
				continue // another variable's name, not a misspelling
			}
			checked++
			errs := unknownVariables(map[string]string{m: "x"})
			var ue *UnknownVariableError
			if len(errs) != 1 || !errors.As(errs[0], &ue) || ue.Name != m {
				t.Fatalf("%s: unknownVariables = %v, want one UnknownVariableError", m, errs)
			}
			if !slices.Contains(ue.Suggestions, v.Name) {
				t.Errorf("%s (from %s): suggestions %v lack %s", m, v.Name, ue.Suggestions, v.Name)
				continue
			}
			if len(ue.Suggestions) > 1 {
				shared++
				for _, s := range ue.Suggestions {
					if osa(m, s) != 1 {
						t.Errorf("%s: suggests %s too, which is not one edit away", m, s)
					}
				}
			}
			if want := "did you mean " + v.Name; len(ue.Suggestions) == 1 && !strings.Contains(ue.Error(), want) {
				t.Errorf("%s: message %q does not say %q", m, ue.Error(), want)
			}
		}
	}
	t.Logf("%d misspellings checked; %d are one edit from two variables", checked, shared)
	if checked < 1000 {
		t.Errorf("only %d misspellings generated", checked)
	}
}

// osa is the test's own optimal string alignment distance, so that the
// check above does not trust the library it checks.
func osa(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

func TestUnknownVariablesAreAStartupError(t *testing.T) {
	te := newTestEnv(t)
	tests := []struct {
		name string
		set  map[string]string
		want []string // in the error, in this order
	}{
		{"misspelt optional variable", map[string]string{"PQT_CONNECTONS": "4"},
			[]string{"PQT_CONNECTONS is not a pqtunnel variable; did you mean PQT_CONNECTIONS?"}},
		{"misspelt security setting", map[string]string{"PQT_ALOW": "dns:x"},
			[]string{"PQT_ALOW is not a pqtunnel variable; did you mean PQT_ALLOW?"}},
		{"two, sorted", map[string]string{"PQT_PROXY_PROTOCL": "v2", "PQT_DRAIN_TIMOUT": "5s"},
			[]string{"PQT_DRAIN_TIMOUT is not a pqtunnel variable; did you mean PQT_DRAIN_TIMEOUT?",
				"PQT_PROXY_PROTOCL is not a pqtunnel variable; did you mean PQT_PROXY_PROTOCOL?"}},
		{"nothing near", map[string]string{"PQT_WHATEVER_ELSE": "1"},
			[]string{"PQT_WHATEVER_ELSE is not a pqtunnel variable ('pqtunnel help' lists them)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			environ := maps.Clone(te.base)
			maps.Copy(environ, tt.set)
			_, err := Parse(environ)
			if err == nil {
				t.Fatal("Parse succeeded")
			}
			rest := err.Error()
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error %q lacks %q (in order)", err, w)
				}
				rest = rest[i+len(w):]
			}
			var ue *UnknownVariableError
			if !errors.As(err, &ue) {
				t.Errorf("error %v is not an UnknownVariableError", err)
			}
		})
	}

	// A misspelt required variable: the error says both that it is not set
	// and what was set instead.
	environ := maps.Clone(te.base)
	environ["PQT_TUNNLE"] = environ["PQT_TUNNEL"]
	delete(environ, "PQT_TUNNEL")
	_, err := Parse(environ)
	if err == nil {
		t.Fatal("Parse succeeded without PQT_TUNNEL")
	}
	for _, w := range []string{"PQT_TUNNLE is not a pqtunnel variable; did you mean PQT_TUNNEL?", "PQT_TUNNEL: not set"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}

	// Other names are not pqtunnel's business.
	environ = maps.Clone(te.base)
	environ["PQTUNNEL_BIN"], environ["HOME"], environ["pqt_mode"] = "/bin/x", "/root", "dial"
	if _, err := Parse(environ); err != nil {
		t.Errorf("Parse with non-PQT_ names: %v", err)
	}
}

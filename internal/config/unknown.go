package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/hbollon/go-edlib"
)

// prefix marks pqtunnel's variables; any other name with it is a mistake.
const prefix = "PQT_"

// maxSuggestDistance is the furthest a known name may be from an unknown one
// and still be suggested; further than that the suggestion would be a guess.
const maxSuggestDistance = 3

// UnknownVariableError is a PQT_* name in the environment that pqtunnel
// does not read: most likely a misspelling, which would otherwise leave the
// intended setting at its default without a word (a misspelt PQT_ALLOW
// accepts any certificate the CA signed).
type UnknownVariableError struct {
	Name string
	// Suggestions are the known names nearest to Name, best first; empty
	// when none is near. There are several only when they are equally near.
	Suggestions []string
}

func (e *UnknownVariableError) Error() string {
	if len(e.Suggestions) == 0 {
		return fmt.Sprintf("%s is not a pqtunnel variable ('pqtunnel help' lists them)", e.Name)
	}
	return fmt.Sprintf("%s is not a pqtunnel variable; did you mean %s?", e.Name, strings.Join(e.Suggestions, " or "))
}

// unknownVariables returns an UnknownVariableError for each PQT_* name in
// environ that no Vars field reads, sorted by name so the output is stable.
func unknownVariables(environ map[string]string) []error {
	known := map[string]bool{}
	for _, v := range Variables() {
		known[v.Name] = true
	}
	var names []string
	for k := range environ {
		if strings.HasPrefix(k, prefix) && !known[k] {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	var errs []error
	for _, n := range names {
		errs = append(errs, &UnknownVariableError{Name: n, Suggestions: suggest(n)})
	}
	return errs
}

// suggest returns the known names at the least edit distance from name, in
// the order of Vars. The distance is optimal string alignment, which counts
// a swap of two neighbouring letters as one edit: plain Levenshtein counts
// it as two, so PQT_DAIL_TIMEOUT would be as near PQT_DRAIN_TIMEOUT as
// PQT_DIAL_TIMEOUT.
func suggest(name string) []string {
	best := maxSuggestDistance + 1
	var out []string
	for _, v := range Variables() {
		d := edlib.OSADamerauLevenshteinDistance(name, v.Name)
		switch {
		case d < best:
			best, out = d, []string{v.Name}
		case d == best:
			out = append(out, v.Name)
		}
	}
	return out
}

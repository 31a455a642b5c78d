package config

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// TestVariableNamesAppearOnlyHere: outside this package no string literal
// of the product's code spells a PQT_ variable; the libraries name their
// settings by field, cmd asks Name. The integration tests, the benchmark
// harness and the examples drive the binary through its environment, so
// they spell the variables as a user does and are left out.
func TestVariableNamesAppearOnlyHere(t *testing.T) {
	root, files := testutil.SourceFiles(t)
	variable := regexp.MustCompile(`PQT_[A-Z][A-Z0-9_]*`)
	checked := 0
	for _, rel := range files {
		if strings.HasPrefix(rel, "internal/config/") || strings.HasPrefix(rel, "integration/") || strings.HasPrefix(rel, "examples/") {
			continue
		}
		checked++
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, filepath.Join(root, rel), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				s = lit.Value
			}
			if name := variable.FindString(s); name != "" {
				t.Errorf("%s: a string literal spells %s; name it through internal/config", fset.Position(lit.Pos()), name)
			}
			return true
		})
	}
	if checked < 20 {
		t.Fatalf("checked only %d files", checked)
	}
}

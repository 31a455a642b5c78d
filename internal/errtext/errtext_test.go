package errtext

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// textFuncs are the strings functions that, given an error's text, decide
// something by its content.
var textFuncs = map[string]bool{
	"Contains": true, "ContainsAny": true, "HasPrefix": true, "HasSuffix": true,
	"Index": true, "EqualFold": true, "Cut": true, "Fields": true, "Split": true,
}

// TestNoDecisionOnErrorText parses every non-test Go file of the module and
// fails on a strings function or a comparison applied to err.Error(), or to
// a variable assigned from it in the same function.
func TestNoDecisionOnErrorText(t *testing.T) {
	root, files := testutil.SourceFiles(t)
	for _, rel := range files {
		for _, v := range violations(t, filepath.Join(root, rel)) {
			rel, _ := filepath.Rel(root, v.file)
			t.Errorf("%s:%d: decides by error text: %s", rel, v.line, v.what)
		}
	}
}

// The check must catch the shapes it is there for.
func TestViolationsFound(t *testing.T) {
	src := `package p
import "strings"
func a(err error) bool { return strings.Contains(err.Error(), "remote error") }
func b(err error) bool { msg := err.Error(); return strings.HasPrefix(msg, "x") }
func c(err error) bool { return err.Error() == "EOF" }
func d(err error) string { return "failed: " + err.Error() }
`
	path := filepath.Join(t.TempDir(), "p.go")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	got := violations(t, path)
	if len(got) != 3 {
		t.Fatalf("found %d violations, want 3 (a, b, c; d only builds a message): %+v", len(got), got)
	}
}

type violation struct {
	file string
	line int
	what string
}

func violations(t *testing.T, path string) []violation {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []violation
	report := func(n ast.Node, what string) {
		out = append(out, violation{path, fset.Position(n.Pos()).Line, what})
	}
	// Variables assigned from x.Error(), per file: names are short-lived,
	// so a file-wide set is precise enough.
	fromErr := map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		if as, ok := n.(*ast.AssignStmt); ok && len(as.Lhs) == len(as.Rhs) {
			for i, rhs := range as.Rhs {
				if id, ok := as.Lhs[i].(*ast.Ident); ok && isErrorCall(rhs) {
					fromErr[id.Name] = true
				}
			}
		}
		return true
	})
	isErrText := func(e ast.Expr) bool {
		if isErrorCall(e) {
			return true
		}
		id, ok := e.(*ast.Ident)
		return ok && fromErr[id.Name]
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			sel, ok := n.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "strings" && textFuncs[sel.Sel.Name] {
				for _, a := range n.Args {
					if isErrText(a) {
						report(n, "strings."+sel.Sel.Name+" of an error's text")
					}
				}
			}
		case *ast.BinaryExpr:
			if (n.Op == token.EQL || n.Op == token.NEQ) && (isErrText(n.X) || isErrText(n.Y)) {
				report(n, "comparison of an error's text")
			}
		}
		return true
	})
	return out
}

// isErrorCall reports whether e is a call x.Error() with no arguments.
func isErrorCall(e ast.Expr) bool {
	c, ok := e.(*ast.CallExpr)
	if !ok || len(c.Args) != 0 {
		return false
	}
	sel, ok := c.Fun.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == "Error"
}

package testutil

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestOnlyTestsImportTestutil parses every non-test Go file of the module
// and fails on an import of internal/testutil or a package below it outside
// internal/testutil itself, the benchmark harness (integration/bench) and
// the test-support packages of other packages (named like transporttest):
// test helpers must never reach the binary or the libraries.
func TestOnlyTestsImportTestutil(t *testing.T) {
	root := ModuleRoot(t)
	const prefix = "github.com/pqtunnel/pqtunnel/internal/testutil"
	files, harness := 0, 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		files++
		for _, imp := range f.Imports {
			p, err := strconv.Unquote(imp.Path.Value)
			if err != nil || p != prefix && !strings.HasPrefix(p, prefix+"/") {
				continue
			}
			switch {
			case strings.HasPrefix(rel, "integration/bench/"):
				harness++
			case !strings.HasPrefix(rel, "internal/testutil/") && !strings.HasSuffix(filepath.Base(filepath.Dir(path)), "test"):
				t.Errorf("%s imports %s, which only tests and integration/bench may", rel, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 20 || harness == 0 {
		t.Fatalf("read %d files, %d imports by the harness, under %s: the walk is wrong", files, harness, root)
	}
}

package testutil

import (
	"go/parser"
	"go/token"
	"path"
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
	root, files := SourceFiles(t)
	const prefix = "github.com/pqtunnel/pqtunnel/internal/testutil"
	harness := 0
	for _, rel := range files {
		f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(root, rel), nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, err := strconv.Unquote(imp.Path.Value)
			if err != nil || p != prefix && !strings.HasPrefix(p, prefix+"/") {
				continue
			}
			switch {
			case strings.HasPrefix(rel, "integration/bench/"):
				harness++
			case !strings.HasPrefix(rel, "internal/testutil/") && !strings.HasSuffix(path.Base(path.Dir(rel)), "test"):
				t.Errorf("%s imports %s, which only tests and integration/bench may", rel, p)
			}
		}
	}
	if harness == 0 {
		t.Fatalf("read %d files under %s and no import by the harness: the walk is wrong", len(files), root)
	}
}

// Package testutil holds what the tests of several packages, the
// integration tests and the benchmark harness share: a TCP echo origin, a
// connected loopback TCP pair, free ports, and the start, output capture
// and reaping of child processes. It imports nothing of pqtunnel but
// internal/childproc, so that any package's tests can use it; only tests
// and the harness under integration/ may import it.
//
// Certificates for tests are in the sibling package testca, a pinned pair
// of hybridtls stores in pinned.
package testutil

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// moduleRoot is the directory of the go.mod above the test's directory.
func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// SourceFiles returns the module's root and its non-test Go files, as
// paths relative to it with forward slashes, leaving out hidden
// directories, testdata and modules of their own below it. It fails t when it finds fewer than 20 files:
// the walk started in the wrong place.
func SourceFiles(t testing.TB) (root string, files []string) {
	t.Helper()
	root = moduleRoot(t)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() && path != root {
			// Another module (third_party/quic-go) is not this one's source.
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
				return filepath.SkipDir
			}
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 20 {
		t.Fatalf("found only %d Go files under %s: the walk is wrong", len(files), root)
	}
	return root, files
}

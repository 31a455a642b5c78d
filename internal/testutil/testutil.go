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
	"os"
	"path/filepath"
	"testing"
)

// ModuleRoot is the directory of the go.mod above the test's directory.
func ModuleRoot(t testing.TB) string {
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

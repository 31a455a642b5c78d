// Package integration holds pqtunnel's end-to-end tests: each test builds
// nothing itself but starts the real binary (built once in TestMain, with
// -race when the tests run with it; resident-memory bounds are measured on
// one built without) as separate listen and dial processes on
// loopback, puts an origin behind them, and checks what a user would see:
// bytes, half-closes, refusals, log lines and exit codes.
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// pqtunnelBin is the path of the binary under test, set by TestMain.
var pqtunnelBin string

// identityDir holds the identities that keygen wrote, shared by all tests.
var identityDir string

// binDir is TestMain's temporary directory, which holds the binaries.
var binDir string

// plainBin builds, once, the binary without -race: a test that bounds a
// process's resident memory measures this one, since the race detector's
// shadow memory multiplies what a process touches by five to ten and
// would hide the growth the bound is there to catch. Without -race it is
// pqtunnelBin itself.
var plainBin = sync.OnceValues(func() (string, error) {
	if !raceEnabled {
		return pqtunnelBin, nil
	}
	out := filepath.Join(binDir, "pqtunnel-plain")
	return out, buildBinary(out, false)
})

// memoryBinary is plainBin for a test.
func memoryBinary(t *testing.T) string {
	t.Helper()
	bin, err := plainBin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "pqtunnel-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	identityDir = filepath.Join(dir, "identities")
	if err := os.Mkdir(identityDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	pqtunnelBin = filepath.Join(dir, "pqtunnel")
	if err := buildBinary(pqtunnelBin, raceEnabled); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	return m.Run()
}

// buildBinary builds ./cmd/pqtunnel from the module root into out, with
// the race detector when race is set.
func buildBinary(out string, race bool) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	args := []string{"build"}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "-o", out, "./cmd/pqtunnel")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

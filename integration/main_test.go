// Package integration holds pqtunnel's end-to-end tests: each test builds
// nothing itself but starts the real binary (built once in TestMain, with
// -race when the tests run with it) as separate listen and dial processes on
// loopback, puts an origin behind them, and checks what a user would see:
// bytes, half-closes, refusals, log lines and exit codes.
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pqtunnelBin is the path of the binary under test, set by TestMain.
var pqtunnelBin string

// identityDir holds the identities that keygen wrote, shared by all tests.
var identityDir string

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
	identityDir = filepath.Join(dir, "identities")
	if err := os.Mkdir(identityDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	pqtunnelBin = filepath.Join(dir, "pqtunnel")
	if err := buildBinary(pqtunnelBin); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	return m.Run()
}

// buildBinary builds ./cmd/pqtunnel from the module root into out.
func buildBinary(out string) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	args := []string{"build"}
	if raceEnabled {
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

//go:build !windows

package examples_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallBlock checks what README's Install block names without
// building it all: the package 'go install' fetches is this repository's
// command, each make target exists and builds ./cmd/pqtunnel (make -n
// prints its commands without running them), and the Dockerfile builds it.
func TestInstallBlock(t *testing.T) {
	requireTools(t, "make")
	var block string
	for _, b := range shellBlocks(t, "README.md") {
		if strings.Contains(b.text, "go install ") {
			block = b.text
		}
	}
	if block == "" {
		t.Fatal("README.md has no shell block with go install")
	}
	commands := 0
	for _, line := range strings.Split(strings.TrimSpace(block), "\n") {
		cmd := strings.TrimSpace(trailingComment.ReplaceAllString(line, ""))
		f := strings.Fields(cmd)
		commands++
		switch {
		case len(f) == 3 && f[0] == "go" && f[1] == "install":
			pkg, version, _ := strings.Cut(f[2], "@")
			if version != "latest" {
				t.Errorf("%q: want @latest", cmd)
			}
			list := exec.Command("go", "list", "-f", "{{.Name}}", pkg)
			list.Dir = repoRoot
			if out, err := list.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "main" {
				t.Errorf("%q: %s is not this repository's command: %v %s", cmd, pkg, err, out)
			}
		case len(f) == 2 && f[0] == "make":
			dry := exec.Command("make", "-n", f[1])
			dry.Dir = repoRoot
			out, err := dry.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "go build") || !strings.Contains(string(out), "./cmd/pqtunnel") {
				t.Errorf("%q: make -n %s does not build ./cmd/pqtunnel: %v\n%s", cmd, f[1], err, out)
			}
		case len(f) >= 3 && f[0] == "docker" && f[1] == "build" && f[len(f)-1] == ".":
			if df := readFile(t, filepath.Join(repoRoot, "Dockerfile")); !strings.Contains(df, "./cmd/pqtunnel") {
				t.Errorf("%q: the Dockerfile does not build ./cmd/pqtunnel", cmd)
			}
		default:
			t.Errorf("README's Install block has %q, which this test does not know how to check", cmd)
		}
	}
	if commands < 3 {
		t.Errorf("the Install block has %d commands", commands)
	}
}

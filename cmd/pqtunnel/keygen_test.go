package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
)

// keygenFile runs 'pqtunnel keygen -o path' and returns the pin it printed.
func keygenFile(t *testing.T, path string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"keygen", "-o", path}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("keygen exited %d: %s", code, stderr.String())
	}
	return strings.TrimSuffix(stdout.String(), "\n")
}

func TestKeygenWritesIdentityAndPrintsPin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.id")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"keygen", "-o", path}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("keygen exited %d: %s", code, stderr.String())
	}
	out := stdout.String()
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Fatalf("keygen printed %q, want exactly one line", out)
	}
	line := strings.TrimSuffix(out, "\n")
	pin, err := pinned.ParsePin(line)
	if err != nil {
		t.Fatalf("keygen printed %q, not a pin: %v", line, err)
	}
	if line != pin.String() {
		t.Errorf("keygen printed %q, want the canonical form %q", line, pin)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("identity file mode %#o, want 0600", perm)
	}
	id, err := pinned.LoadIdentityFile(path)
	if err != nil {
		t.Fatalf("LoadIdentityFile of keygen's output: %v", err)
	}
	if id.Pin != pin {
		t.Errorf("file's pin %s, printed %s", id.Pin, pin)
	}

	// 'pqtunnel pin FILE' prints the same pin.
	stdout.Reset()
	if code := run([]string{"pin", path}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("pin exited %d: %s", code, stderr.String())
	}
	if stdout.String() != out {
		t.Errorf("pin printed %q, keygen %q", stdout.String(), out)
	}
}

func TestKeygenRefusesToOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.id")
	keygenFile(t, path)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"keygen", "-o", path}, nil, &stdout, &stderr); code == 0 {
		t.Fatal("keygen overwrote an existing identity")
	}
	if stdout.Len() != 0 {
		t.Errorf("failed keygen printed %q on stdout", stdout.String())
	}
	if !strings.Contains(stderr.String(), "never overwritten") {
		t.Errorf("stderr %q does not say the identity is never overwritten", stderr.String())
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("the existing identity file changed")
	}
}

func TestKeygenAndPinUsageErrors(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.id")
	keygenFile(t, open)
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"keygen without -o", []string{"keygen"}, "-o FILE is required"},
		{"keygen under a file", []string{"keygen", "-o", filepath.Join(open, "a.id")}, "keygen"},
		{"pin without a file", []string{"pin"}, "usage"},
		{"pin of a missing file", []string{"pin", filepath.Join(dir, "missing.id")}, "pin"},
		{"pin of a world-readable file", []string{"pin", open}, "chmod 600"},
		{"unknown command", []string{"frobnicate"}, "pqtunnel help"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tt.args, nil, &stdout, &stderr); code == 0 {
				t.Fatalf("%v exited 0; stdout %q", tt.args, stdout.String())
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"version"}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("version exited %d: %s", code, stderr.String())
	}
	if !strings.HasPrefix(stdout.String(), "pqtunnel ") || strings.Count(stdout.String(), "\n") != 1 {
		t.Errorf("version printed %q", stdout.String())
	}
}

// keygen -o on a fresh host (/etc/pqtunnel/server.id) creates the missing
// directories, private to the owner, and still never overwrites.
func TestKeygenCreatesMissingDirectories(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, "etc", "pqtunnel", "server.id")
	pin := keygenFile(t, path)
	for _, d := range []string{filepath.Join(root, "etc"), filepath.Join(root, "etc", "pqtunnel")} {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if perm := st.Mode().Perm(); perm != 0o700 {
			t.Errorf("%s has mode %#o, want 0700", d, perm)
		}
	}
	id, err := pinned.LoadIdentityFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if id.Pin.String() != pin {
		t.Errorf("file's pin %s, printed %s", id.Pin, pin)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"keygen", "-o", path}, nil, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), "never overwritten") {
		t.Errorf("second keygen into the new directory exited %d: %s", code, stderr.String())
	}
}

func TestKeygenProfile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cnsa2.id")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"keygen", "--profile", "cnsa2", "-o", path}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("keygen --profile cnsa2 exited %d: %s", code, stderr.String())
	}
	id, err := pinned.LoadIdentityFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if p := id.MLDSA.PublicKey().Parameters().String(); p != "ML-DSA-87" || id.Pin.String() != strings.TrimSpace(stdout.String()) {
		t.Fatalf("keygen --profile cnsa2 wrote an %s identity with pin %s, printed %q", p, id.Pin, stdout.String())
	}
	if code := run([]string{"keygen", "-profile", "fips", "-o", filepath.Join(dir, "x.id")}, nil, &stdout, &stderr); code != 2 {
		t.Errorf("keygen -profile fips exited %d, want 2", code)
	}
}

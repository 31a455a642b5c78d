//go:build unix

package auth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckTrustFileMode(t *testing.T) {
	write := func(t *testing.T, dir string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, "pins")
		if err := os.WriteFile(p, []byte("# none\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct {
		name    string
		mode    os.FileMode
		dirMode os.FileMode
		ok      bool
	}{
		{"0600", 0o600, 0o700, true},
		{"0644", 0o644, 0o755, true},
		{"0440", 0o440, 0o755, true},
		{"group-writable", 0o664, 0o755, false},
		{"world-writable", 0o646, 0o755, false},
		{"directory world-writable", 0o644, 0o777, false},
		{"directory group-writable", 0o644, 0o775, false},
		{"sticky directory", 0o644, 0o777 | os.ModeSticky, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "d")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			p := write(t, dir, tt.mode)
			if err := os.Chmod(dir, tt.dirMode); err != nil {
				t.Fatal(err)
			}
			err := CheckTrustFileMode(p, "pins file")
			if tt.ok != (err == nil) {
				t.Fatalf("CheckTrustFileMode(%s in a %s directory) = %v, want ok=%v", tt.mode, tt.dirMode, err, tt.ok)
			}
			var te *TrustFileError
			if err != nil && (!errors.As(err, &te) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "fix: chmod go-w")) {
				t.Errorf("error %q is no *TrustFileError naming %s and the fix", err, p)
			}
		})
	}
}

// A Kubernetes Secret volume: the configured path is a link to ..data/NAME,
// ..data a link to a timestamped directory holding the root-owned file.
func TestCheckTrustFileModeKubernetesSecret(t *testing.T) {
	dir := t.TempDir()
	ts := filepath.Join(dir, "..2026_12_01_22_00_00.123")
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "peers"), []byte("# none\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "peers")
	if err := os.Symlink("..data/peers", link); err != nil {
		t.Fatal(err)
	}
	if err := CheckTrustFileMode(link, "pins file"); err != nil {
		t.Errorf("Secret-style mount refused: %v", err)
	}
	// The link's own mode (0777 on Linux) does not count; the file's does.
	if err := os.Chmod(filepath.Join(ts, "peers"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := CheckTrustFileMode(link, "pins file"); err == nil {
		t.Error("a world-writable file behind the links was accepted")
	}
}

// A file owned by a user other than root or this process's is refused.
func TestCheckTrustFileModeOtherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckTrustFileMode(p, "CA bundle"); err != nil {
		t.Fatalf("root-owned 0644 refused: %v", err)
	}
	if err := os.Chown(p, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	err := CheckTrustFileMode(p, "CA bundle")
	if err == nil || !strings.Contains(err.Error(), "uid 4242") {
		t.Errorf("a file owned by uid 4242 gave %v, want a refusal naming the owner", err)
	}
}

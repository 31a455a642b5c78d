//go:build unix

package auth

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// CheckTrustFileMode refuses a file that says whom this side trusts (a pins
// file, a CA bundle, a file of allow rules) when users other than its owner
// can change it: a file, or the directory holding it, that group or others
// may write (a directory with the sticky bit, as /tmp, excepted), or a
// file owned by another user than root or the one pqtunnel runs as. what
// names the file in the error ("pins file"). Symbolic links are followed,
// so a Kubernetes Secret mount (links into ..data, root-owned 0644 or 0440
// files) is accepted.
func CheckTrustFileMode(path, what string) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	perm := st.Mode().Perm()
	if perm&0o022 != 0 {
		return &TrustFileError{Path: path, What: what, Mode: perm, Why: "group or other users can write it", Fix: "chmod go-w " + path}
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 && int(sys.Uid) != os.Geteuid() {
		return &TrustFileError{Path: path, What: what, Mode: perm, Why: fmt.Sprintf("it is owned by uid %d, neither root nor the user pqtunnel runs as (uid %d), who can change it", sys.Uid, os.Geteuid()),
			Fix: fmt.Sprintf("chown %d %s, or root", os.Geteuid(), path)}
	}
	dir := filepath.Dir(real)
	dst, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if dperm := dst.Mode(); dperm.Perm()&0o022 != 0 && dperm&os.ModeSticky == 0 {
		return &TrustFileError{Path: path, What: what, Mode: dperm.Perm(), Dir: dir, Why: "group or other users can write its directory, and so replace the file", Fix: "chmod go-w " + dir}
	}
	return nil
}

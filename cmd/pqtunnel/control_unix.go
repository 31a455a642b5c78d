//go:build unix

package main

import (
	"fmt"
	"os"
	"syscall"
)

// checkPrivateDir refuses a control socket directory that is a symbolic
// link, belongs to another user, or that others may write: in a shared
// temporary directory someone else could have made it first.
func checkPrivateDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("control socket directory %s is not a directory", dir)
	case !ok || int(st.Uid) != os.Getuid():
		return fmt.Errorf("control socket directory %s does not belong to this user", dir)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("control socket directory %s is writable by others (mode %04o)", dir, fi.Mode().Perm())
	}
	return nil
}

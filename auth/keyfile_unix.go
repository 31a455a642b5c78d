//go:build unix

package auth

import (
	"fmt"
	"os"
	"syscall"
)

// CheckKeyFileMode refuses a private-key file that other users can read. Group
// read is accepted only on a file owned by root, as systemd credentials and
// Kubernetes fsGroup volumes present it (the PostgreSQL rule for key files).
func CheckKeyFileMode(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("read key file: %w", err)
	}
	perm := st.Mode().Perm()
	rootOwned := false
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		rootOwned = sys.Uid == 0
	}
	if perm&0o007 != 0 || perm&0o070 != 0 && (!rootOwned || perm&0o030 != 0) {
		return fmt.Errorf("key file %s has mode %#o: other users can read or change the private key (fix: chmod 600 %s)", path, perm, path)
	}
	return nil
}

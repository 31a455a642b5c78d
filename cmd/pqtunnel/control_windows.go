package main

import (
	"fmt"
	"os"
)

// checkPrivateDir refuses a control socket directory that is not a plain
// directory. Windows keeps each user's temporary directory under the
// user's profile, which other users cannot write, so ownership is not
// checked here.
func checkPrivateDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("control socket directory %s is not a directory", dir)
	}
	return nil
}

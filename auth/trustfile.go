package auth

import (
	"fmt"
	"io/fs"
)

// TrustFileError refuses a file of trust material (pins, CA certificates,
// allow rules) that users other than its owner can change, which would let
// them choose whom this side accepts.
type TrustFileError struct {
	Path string      // the file as configured
	What string      // "pins file", "CA bundle", ...
	Mode fs.FileMode // the permission bits at fault: the file's, or Dir's
	Dir  string      // the directory at fault; empty when it is the file
	Why  string
	Fix  string
}

func (e *TrustFileError) Error() string {
	if e.Dir != "" {
		return fmt.Sprintf("%s %s: directory %s has mode %#o: %s (fix: %s)", e.What, e.Path, e.Dir, e.Mode, e.Why, e.Fix)
	}
	if e.Mode == 0 {
		return fmt.Sprintf("%s %s: %s (fix: %s)", e.What, e.Path, e.Why, e.Fix)
	}
	return fmt.Sprintf("%s %s has mode %#o: %s (fix: %s)", e.What, e.Path, e.Mode, e.Why, e.Fix)
}

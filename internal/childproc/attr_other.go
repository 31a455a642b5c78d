//go:build unix && !linux

package childproc

import "syscall"

// Attr returns attributes for a child in a process group of its own when
// group is true. Only Linux can tie a child's life to its parent's
// (Pdeathsig); elsewhere the caller's cleanup must kill its children.
func Attr(group bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: group}
}

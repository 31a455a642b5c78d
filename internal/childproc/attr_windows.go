package childproc

import "syscall"

// Attr returns default attributes: Windows has neither process groups in
// the Unix sense nor Pdeathsig, so the caller's cleanup must kill its
// children.
func Attr(bool) *syscall.SysProcAttr { return &syscall.SysProcAttr{} }

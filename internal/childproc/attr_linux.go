package childproc

import "syscall"

// Attr returns attributes for a child that the kernel kills when its parent
// dies (Pdeathsig), in a process group of its own when group is true so that
// one signal reaches everything it starts.
func Attr(group bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: group, Pdeathsig: syscall.SIGKILL}
}

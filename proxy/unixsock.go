package proxy

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"time"
)

// ErrSocketInUse is a unix:// forward route's path where another process
// accepts connections already.
var ErrSocketInUse = errors.New("socket is in use by another process")

// listenUnix listens on a unix:// forward route's path. A socket file left
// by a process that is gone is removed first; any other file at the path,
// or a socket some process still serves, is an error and stays untouched.
// The socket gets mode (not on Windows) and, unless group is empty, that
// group (a name or number; an error on Windows, which has no file groups).
// The listener removes the socket file when it is closed.
func listenUnix(path string, mode fs.FileMode, group string) (*net.UnixListener, error) {
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on unix socket: %w", err)
	}
	// Between bind and this chmod the socket has the umask's mode: the
	// directory around it is what keeps others out for that moment. Windows
	// decides who may connect by the socket file's access control list,
	// inherited from its directory; mode bits mean nothing there.
	if runtime.GOOS != "windows" {
		if err := os.Chmod(path, mode); err != nil {
			_ = ln.Close() // removes the socket file again
			return nil, fmt.Errorf("set mode of unix socket: %w", err)
		}
	}
	if group != "" {
		if err := chownGroup(path, group); err != nil {
			_ = ln.Close()
			return nil, err
		}
	}
	return ln, nil
}

// chownGroup gives the file at path the group named (or numbered) group.
func chownGroup(path, group string) error {
	gid, err := strconv.Atoi(group)
	if err != nil {
		g, lerr := user.LookupGroup(group)
		if lerr != nil {
			return fmt.Errorf("group of unix socket: %w", lerr)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return fmt.Errorf("group %s has gid %q, not a number: %w", group, g.Gid, err)
		}
	}
	if err := os.Lchown(path, -1, gid); err != nil {
		return fmt.Errorf("set group of unix socket: %w", err)
	}
	return nil
}

// removeStaleSocket removes the socket file at path when no process accepts
// on it. A path that does not exist is fine.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check unix socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s): not removed", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close() // it only told us that someone listens
		return fmt.Errorf("%s: %w", path, ErrSocketInUse)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale unix socket: %w", err)
	}
	return nil
}

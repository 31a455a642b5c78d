package config

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
)

// Control is where a side serves its control socket, the Unix socket that
// 'pqtunnel status' asks when PQT_METRICS is not set.
type Control struct {
	// Path is the socket's path; empty when PQT_CONTROL=off.
	Path string
	// Auto is true for the default path, derived from the environment:
	// failing to serve there is a warning, not a start-up error, and its
	// directory must be this user's alone.
	Auto bool
}

// Values of PQT_CONTROL that are not paths.
const (
	ControlAuto = "auto"
	ControlOff  = "off"
)

// ControlOf is the control socket that the environment names: PQT_CONTROL's
// path, none for off, or for auto (the default) a path in this user's
// runtime directory named after the variables that tell one side on a host
// from another (PQT_MODE, PQT_TUNNEL, PQT_FORWARD, PQT_TARGET), so that a
// side and 'pqtunnel status' run with the same environment find the same
// socket without configuring one. It reads only those variables, so that
// status needs none of the side's identity to find it.
func ControlOf(environ map[string]string) Control {
	switch v := environ["PQT_CONTROL"]; v {
	case ControlOff:
		return Control{}
	case "", ControlAuto:
		h := sha256.New()
		for _, name := range []string{"PQT_MODE", "PQT_TUNNEL", "PQT_FORWARD", "PQT_TARGET"} {
			h.Write([]byte(environ[name]))
			h.Write([]byte{0})
		}
		mode := environ["PQT_MODE"]
		if mode == "" {
			mode = "local" // tls:// routes joined on one side need no PQT_MODE
		}
		name := "pqtunnel-" + mode + "-" + hex.EncodeToString(h.Sum(nil)[:8]) + ".sock"
		return Control{Path: filepath.Join(runtimeDir(environ), name), Auto: true}
	default:
		return Control{Path: v}
	}
}

// runtimeDir is the directory for this user's control sockets:
// $XDG_RUNTIME_DIR/pqtunnel when set (systemd's per-user runtime
// directory), /run/pqtunnel for root on Linux, else pqtunnel-UID in the
// temporary directory.
func runtimeDir(environ map[string]string) string {
	if d := environ["XDG_RUNTIME_DIR"]; d != "" {
		return filepath.Join(d, "pqtunnel")
	}
	uid := os.Getuid() // -1 on Windows
	if uid == 0 && runtime.GOOS == "linux" {
		return "/run/pqtunnel"
	}
	return filepath.Join(os.TempDir(), "pqtunnel-"+strconv.Itoa(max(uid, 0)))
}

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/config"
)

// errControlInUse: a live process answers on the control socket already.
var errControlInUse = errors.New("another running pqtunnel answers there (a side with the same " +
	config.Name("Mode") + ", " + config.Name("Tunnel") + ", " + config.Name("Forward") + " and " + config.Name("Target") + "?)")

// serveControl serves h on the control socket; the returned function stops
// it and removes the socket. A failure at the default (auto) path is
// logged and the side runs without it; at a path PQT_CONTROL names, it is a
// start-up error.
func serveControl(ctl config.Control, h http.Handler, log *slog.Logger) (func(), error) {
	if ctl.Path == "" {
		return func() {}, nil
	}
	ln, err := listenControl(ctl)
	if err != nil {
		if ctl.Auto {
			log.Warn("control socket not served: 'pqtunnel status' needs "+config.Name("Metrics")+" then", "path", ctl.Path, "err", err)
			return func() {}, nil
		}
		return nil, fmt.Errorf("%s: %w", config.Name("Control"), err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("control socket server stopped", "err", err)
		}
	}()
	log.Info("control socket listening", "path", ctl.Path)
	return func() {
		_ = srv.Close() // shutting down; closing the listener removes the socket
		<-done
	}, nil
}

// listenControl creates the socket, mode 0600, in a directory it creates
// with mode 0700 when missing. The default directory may be in a shared
// temporary directory, so it must be a real directory of this user's that
// nobody else may write (checkPrivateDir). A socket left by a process that
// died is replaced; one that a live process answers on is not.
func listenControl(ctl config.Control) (net.Listener, error) {
	dir := filepath.Dir(ctl.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	if ctl.Auto {
		if err := checkPrivateDir(dir); err != nil {
			return nil, err
		}
	}
	if fi, err := os.Lstat(ctl.Path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", ctl.Path)
		}
		if c, err := net.DialTimeout("unix", ctl.Path, time.Second); err == nil {
			_ = c.Close() // it answered: that is all we needed
			return nil, fmt.Errorf("%s: %w", ctl.Path, errControlInUse)
		}
		if err := os.Remove(ctl.Path); err != nil {
			return nil, fmt.Errorf("remove stale control socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", ctl.Path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(ctl.Path, 0o600); err != nil {
		_ = ln.Close() // refused: it would be open to others
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

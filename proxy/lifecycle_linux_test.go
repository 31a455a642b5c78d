package proxy

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/testutil/pinned"
	"github.com/pqtunnel/pqtunnel/transport/memtransport"
	"github.com/pqtunnel/pqtunnel/wire"
)

// A forward listener whose socket was shut down fails every accept with
// EINVAL: retrying cannot help, so Run stops and returns the error instead
// of logging it once a second for ever.
func TestRunReturnsABrokenForwardListenersError(t *testing.T) {
	store, _ := pinned.Stores(t, wire.ALPN)
	e, err := New(Config{
		Mode: ModeListen, Tunnel: []string{"127.0.0.1:0"}, Transport: memtransport.New(),
		Forward: []Route{{Name: "web", Addr: "127.0.0.1:0"}}, TLS: store,
	})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := e.forwardLns[0].(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(context.Background()) }()
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if err := waitRun(t, done); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Run returned %v, want the accept error EINVAL", err)
	}
}

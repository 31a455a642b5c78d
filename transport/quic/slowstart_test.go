package quic

import (
	"runtime/debug"
	"testing"
)

// quicGoCopy is where the module's go.mod points github.com/quic-go/quic-go:
// a copy of v0.65.0 whose senders stay in slow start while they send no
// more than ACKs and flow-control updates (see its
// internal/congestion/cubic_sender.go, MaybeExitSlowStart). Unpatched, a
// connection that first carried an upload left slow start on the listen
// side at its initial 40 KiB window, and the downloads after it moved at a
// fifth of the link's rate at 20 ms and a thirtieth at 80 ms.
const quicGoCopy = "./third_party/quic-go"

// The binary is built with the patched copy of quic-go, not the release.
func TestQUICGoIsThePatchedCopy(t *testing.T) {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("no build information in the test binary")
	}
	for _, m := range info.Deps {
		if m.Path != "github.com/quic-go/quic-go" {
			continue
		}
		if m.Replace == nil || m.Replace.Path != quicGoCopy {
			t.Fatalf("github.com/quic-go/quic-go %s is built from %+v, want the copy in %s (go.mod's replace)", m.Version, m.Replace, quicGoCopy)
		}
		return
	}
	t.Fatal("github.com/quic-go/quic-go is not among the build's modules")
}

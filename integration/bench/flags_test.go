package main

import (
	"context"
	"io"
	"maps"
	"sync/atomic"
	"testing"
	"time"
)

// -wan-env gives every WAN side PQT_ settings; anything else is refused
// with the flag's name.
func TestWANEnvTakesPQTSettingsOnly(t *testing.T) {
	o, err := parseFlags([]string{"-wan", "-wan-env", "PQT_MAX_STREAMS=63, PQT_LOG_LEVEL=info"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"PQT_MAX_STREAMS": "63", "PQT_LOG_LEVEL": "info"}; !maps.Equal(o.wanEnv, want) {
		t.Errorf("wanEnv %v, want %v", o.wanEnv, want)
	}
	for _, bad := range []string{"PQT_MAX_STREAMS", "GOMAXPROCS=1", "PQT_=1", "PQT_A=1,,PQT_B=2"} {
		if _, err := parseFlags([]string{"-wan", "-wan-env", bad}, io.Discard); err == nil {
			t.Errorf("-wan-env %q was taken", bad)
		}
	}
}

// awaitQuiet returns once the counter stops growing, and gives up at its
// limit while it keeps growing.
func TestAwaitQuietWaitsOutATail(t *testing.T) {
	var n atomic.Uint64
	tail := func() uint64 { // a tail of 5 busy steps, then silence
		if v := n.Add(1); v <= 5 {
			return v * 1000
		}
		return 5000
	}
	ok, err := awaitQuiet(context.Background(), tail, time.Millisecond, 10, time.Second)
	if err != nil || !ok || n.Load() < 6 {
		t.Errorf("tail: quiet %v, err %v after %d polls, want quiet after 6 or more", ok, err, n.Load())
	}
	var m atomic.Uint64
	busy := func() uint64 { return m.Add(1000) }
	start := time.Now()
	ok, err = awaitQuiet(context.Background(), busy, time.Millisecond, 10, 50*time.Millisecond)
	if err != nil || ok || time.Since(start) < 50*time.Millisecond {
		t.Errorf("busy: quiet %v, err %v after %s, want not quiet at the 50ms limit", ok, err, time.Since(start))
	}
}

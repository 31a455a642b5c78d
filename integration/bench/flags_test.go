package main

import (
	"io"
	"maps"
	"testing"
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

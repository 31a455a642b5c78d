package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/config"
)

// Every subcommand answers --help with its usage on stdout and exit 0, and
// refuses an unknown flag or a stray argument with exit 2 and a message,
// without doing its work (demo --help must not start the demo).
func TestSubcommandsHelpAndBadFlags(t *testing.T) {
	for _, cmd := range []string{"run", "help", "version", "keygen", "pin", "demo", "check", "ca"} {
		t.Run(cmd, func(t *testing.T) {
			for _, h := range []string{"--help", "-h"} {
				var stdout, stderr bytes.Buffer
				if code := run([]string{cmd, h}, nil, &stdout, &stderr); code != 0 {
					t.Errorf("%s %s exited %d, want 0; stderr %q", cmd, h, code, stderr.String())
				}
				if !strings.HasPrefix(stdout.String(), "usage: pqtunnel ") {
					t.Errorf("%s %s printed %q, want the usage", cmd, h, stdout.String())
				}
				if strings.Contains(stdout.String(), "origins:") || stderr.Len() != 0 {
					t.Errorf("%s %s did more than print usage: stdout %q stderr %q", cmd, h, stdout.String(), stderr.String())
				}
			}
			var stdout, stderr bytes.Buffer
			if code := run([]string{cmd, "--frobnicate"}, nil, &stdout, &stderr); code != 2 {
				t.Errorf("%s --frobnicate exited %d, want 2", cmd, code)
			}
			if !strings.Contains(stderr.String(), "frobnicate") || !strings.Contains(stderr.String(), "usage: pqtunnel ") {
				t.Errorf("%s --frobnicate: stderr %q does not name the flag and show the usage", cmd, stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("%s --frobnicate wrote %q on stdout", cmd, stdout.String())
			}
		})
	}
	for _, args := range [][]string{{"demo", "extra"}, {"pin"}, {"pin", "a", "b"}, {"keygen"}, {"frobnicate"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, nil, &stdout, &stderr); code != 2 {
			t.Errorf("%q exited %d, want 2; stderr %q", args, code, stderr.String())
		}
	}
}

func TestVersionLine(t *testing.T) {
	goOS := runtime.GOOS + "/" + runtime.GOARCH
	vcs := []debug.BuildSetting{
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "0fcde9a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7"},
		{Key: "vcs.time", Value: "2026-12-01T20:06:36Z"},
		{Key: "vcs.modified", Value: "true"},
	}
	tests := []struct {
		name    string
		stamped string
		bi      *debug.BuildInfo
		want    string
	}{
		{"go install @version", "", &debug.BuildInfo{GoVersion: "go1.27.3", Main: debug.Module{Version: "v1.2.0"}}, "v1.2.0 go1.27.3 " + goOS},
		{"build from a checkout", "", &debug.BuildInfo{GoVersion: "go1.27.3", Main: debug.Module{Version: "(devel)"}, Settings: vcs},
			"devel rev 0fcde9a1c2d3 2026-12-01T20:06:36Z modified go1.27.3 " + goOS},
		{"stamped by ldflags", "v9.9.9", &debug.BuildInfo{GoVersion: "go1.27.3", Settings: vcs[:3]},
			"v9.9.9 rev 0fcde9a1c2d3 2026-12-01T20:06:36Z go1.27.3 " + goOS},
		{"no build info", "", nil, "devel " + runtime.Version() + " " + goOS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := versionLine(tt.stamped, tt.bi); got != tt.want {
				t.Errorf("versionLine = %q, want %q", got, tt.want)
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"version"}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("version exited %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), runtime.Version()) {
		t.Errorf("version printed %q, without the Go version %s", stdout.String(), runtime.Version())
	}
}

// JSON logs give durations as Go duration text; text logs are unchanged.
func TestJSONLogDurationsAreText(t *testing.T) {
	var buf bytes.Buffer
	c := &config.Config{LogJSON: true}
	newLogger(c, &buf).Info("tunnel connected", "handshake", 4140*time.Microsecond, "n", 3)
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("%q: %v", buf.String(), err)
	}
	if rec["handshake"] != "4.14ms" || rec["n"] != float64(3) {
		t.Errorf("JSON record %v: want handshake \"4.14ms\" and n 3", rec)
	}
	buf.Reset()
	newLogger(&config.Config{}, &buf).Info("tunnel connected", "handshake", 4140*time.Microsecond)
	if !strings.Contains(buf.String(), "handshake=4.14ms") {
		t.Errorf("text record %q lacks handshake=4.14ms", buf.String())
	}
}

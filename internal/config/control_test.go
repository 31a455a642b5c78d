package config

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestControlOf(t *testing.T) {
	side := map[string]string{"PQT_MODE": "listen", "PQT_TUNNEL": ":8443", "PQT_TARGET": "127.0.0.1:6379", "XDG_RUNTIME_DIR": "/run/user/1000"}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for kk, vv := range side {
			m[kk] = vv
		}
		m[k] = v
		return m
	}
	auto := ControlOf(side)
	if !auto.Auto || filepath.Dir(auto.Path) != "/run/user/1000/pqtunnel" || !strings.HasPrefix(filepath.Base(auto.Path), "pqtunnel-listen-") || !strings.HasSuffix(auto.Path, ".sock") {
		t.Errorf("auto control socket %+v, want /run/user/1000/pqtunnel/pqtunnel-listen-….sock", auto)
	}
	if again := ControlOf(with("PQT_CONTROL", "auto")); again != auto {
		t.Errorf("PQT_CONTROL=auto gives %+v, unset %+v: want the same", again, auto)
	}
	// Variables that do not tell one side from another leave the path alone.
	if other := ControlOf(with("PQT_LOG_LEVEL", "debug")); other != auto {
		t.Errorf("PQT_LOG_LEVEL changed the control socket: %+v", other)
	}
	for _, k := range []string{"PQT_MODE", "PQT_TUNNEL", "PQT_FORWARD", "PQT_TARGET"} {
		if other := ControlOf(with(k, "other")); other.Path == auto.Path {
			t.Errorf("%s does not change the control socket's path", k)
		}
	}
	if off := ControlOf(with("PQT_CONTROL", "off")); off.Path != "" {
		t.Errorf("PQT_CONTROL=off gives %+v, want no socket", off)
	}
	if p := ControlOf(with("PQT_CONTROL", "/run/pqtunnel/web.sock")); p.Path != "/run/pqtunnel/web.sock" || p.Auto {
		t.Errorf("an explicit path gives %+v", p)
	}
	noXDG := ControlOf(map[string]string{"PQT_MODE": "dial"})
	if noXDG.Path == "" || strings.Contains(noXDG.Path, "/run/user") {
		t.Errorf("without XDG_RUNTIME_DIR: %+v, want a path outside it", noXDG)
	}
}

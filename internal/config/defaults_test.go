package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/internal/defaults"
)

// table is package defaults by Vars field: the envDefault tags must say the
// same, so that the binary and a library user get the same tunnel.
var table = map[string]any{
	"Transport":        defaults.Transport,
	"Connections":      defaults.Connections,
	"PQ":               defaults.PQ,
	"Groups":           defaults.Groups,
	"Auth":             defaults.Auth,
	"HandshakeTimeout": defaults.HandshakeTimeout,
	"DialTimeout":      defaults.DialTimeout,
	"IdleTimeout":      defaults.IdleTimeout,
	"KeepAlive":        defaults.KeepAlive,
	"KeepAliveTimeout": defaults.KeepAliveTimeout,
	"FallbackTimeout":  defaults.FallbackTimeout,
	"QUICRetry":        defaults.QUICRetry,
	"FallbackLoss":     defaults.FallbackLoss,
	"ResolveInterval":  defaults.ResolveInterval,
	"MaxStreams":       defaults.MaxStreams,
	"MaxTotalStreams":  defaults.MaxTotalStreams,
	"MaxHandshakes":    defaults.MaxHandshakes,
	"MaxConnections":   defaults.MaxConnections,
	"MaxConnMemory":    ByteSize(defaults.MaxConnMemory),
	"MaxClientsPerIP":  defaults.MaxClientsPerIP,
	"MaxPeerShare":     defaults.PeerShare,
	"DrainTimeout":     defaults.DrainTimeout,
	"ReadyTargetDown":  defaults.ReadyTargetDown,
	"LogLevel":         defaults.LogLevel,
	"LogFormat":        defaults.LogFormat,
	"UnixMode":         fmt.Sprintf("%04o", defaults.UnixSocketMode),
	"AccessLog":        defaults.AccessLog,
	"Control":          defaults.Control,
}

func TestEnvDefaultsAgreeWithTheTable(t *testing.T) {
	ty := reflect.TypeFor[Vars]()
	seen := map[string]bool{}
	for i := range ty.NumField() {
		f := ty.Field(i)
		tag, hasTag := f.Tag.Lookup("envDefault")
		want, inTable := table[f.Name]
		switch {
		case hasTag && !inTable:
			t.Errorf("%s has envDefault %q but no entry in package defaults", f.Tag.Get("env"), tag)
		case !hasTag && inTable:
			t.Errorf("%s has no envDefault tag but package defaults has %v", f.Tag.Get("env"), want)
		case hasTag:
			seen[f.Name] = true
			if got := defaultValue(t, reflect.Zero(f.Type).Interface(), tag); got != any(want) {
				t.Errorf("%s: envDefault %q, package defaults %v", f.Tag.Get("env"), tag, want)
			}
		}
	}
	for name := range table {
		if !seen[name] {
			t.Errorf("the test's table names %s, which Vars lacks or gives no default", name)
		}
	}
}

// The default group list parses to hybridtls's default, which a Policy
// without groups would be given.
func TestDefaultGroupsAreHybridtlsDefault(t *testing.T) {
	gs, err := hybridtls.ParseGroups(defaults.Groups, hybridtls.Strict)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gs, hybridtls.DefaultGroups) {
		t.Errorf("defaults.Groups parses to %s, hybridtls.DefaultGroups is %s", hybridtls.GroupNames(gs), hybridtls.GroupNames(hybridtls.DefaultGroups))
	}
	if m, err := hybridtls.ParsePQMode(defaults.PQ); err != nil || m != hybridtls.Strict {
		t.Errorf("defaults.PQ = %q parses to %q, %v; want strict", defaults.PQ, m, err)
	}
}

// defaultValue parses an envDefault tag as the type of v.
func defaultValue(t *testing.T, v any, tag string) any {
	t.Helper()
	switch v.(type) {
	case ByteSize:
		var b ByteSize
		if err := b.UnmarshalText([]byte(tag)); err != nil {
			t.Fatalf("envDefault %q: %v", tag, err)
		}
		return b
	case time.Duration:
		d, err := time.ParseDuration(tag)
		if err != nil {
			t.Fatalf("envDefault %q: %v", tag, err)
		}
		return d
	case float64:
		f, err := strconv.ParseFloat(tag, 64)
		if err != nil {
			t.Fatalf("envDefault %q: %v", tag, err)
		}
		return f
	case int:
		n, err := strconv.Atoi(tag)
		if err != nil {
			t.Fatalf("envDefault %q: %v", tag, err)
		}
		return n
	}
	return tag
}

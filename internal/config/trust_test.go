package config

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/auth/camode"
)

// A pins file that group or others can write is refused at Parse, naming
// the variable, the file and its mode.
func TestPinsFileWritableByOthersRefused(t *testing.T) {
	te := newTestEnv(t)
	pins := filepath.Join(te.dir, "peers")
	if err := os.WriteFile(pins, []byte(te.peerPin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	environ := maps.Clone(te.base)
	environ["PQT_PEERS"] = pins
	if _, err := Parse(environ); err != nil {
		t.Fatalf("a 0600 pins file: %v", err)
	}
	for _, mode := range []os.FileMode{0o664, 0o606} {
		if err := os.Chmod(pins, mode); err != nil {
			t.Fatal(err)
		}
		_, err := Parse(environ)
		if err == nil {
			t.Fatalf("a pins file with mode %#o was accepted", mode)
		}
		msg := err.Error()
		for _, want := range []string{"PQT_PEERS: ", pins, fmt.Sprintf("mode %#o", mode), "chmod go-w"} {
			if !strings.Contains(msg, want) {
				t.Errorf("mode %#o: error %q does not contain %q", mode, msg, want)
			}
		}
	}
}

// PQT_ALLOW reads rules inline and from files; a file's empty list makes
// the material accept nobody; a writable file is refused.
func TestReadAllowFiles(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "allow")
	if err := os.WriteFile(f, []byte("# web tier\nweb=dns:web.internal, dns:*.jobs.internal\n\njobs=uri:spiffe://corp/jobs # batch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rules, files, err := readAllow("cn:admin," + f)
	if err != nil {
		t.Fatal(err)
	}
	want := []camode.AllowRule{
		{Kind: "cn", Value: "admin"},
		{Name: "web", Kind: "dns", Value: "web.internal"},
		{Kind: "dns", Value: "*.jobs.internal"},
		{Name: "jobs", Kind: "uri", Value: "spiffe://corp/jobs"},
	}
	if files != 1 || !reflect.DeepEqual(rules, want) {
		t.Errorf("readAllow = %v, %d files; want %v, 1", rules, files, want)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("# nobody\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if rules, files, err := readAllow(empty); err != nil || len(rules) != 0 || files != 1 {
		t.Errorf("empty file: %v, %d files, %v; want no rules from 1 file", rules, files, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bad"), []byte("web=dns:a\nftp:x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readAllow(filepath.Join(dir, "bad")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("a bad rule gave %v, want an error naming line 2", err)
	}
	if err := os.Chmod(f, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readAllow(f); err == nil || !strings.Contains(err.Error(), f) {
		t.Errorf("a world-writable allow file gave %v, want a refusal naming it", err)
	}
}

// FuzzReadAllow parses inline PQT_ALLOW rules and checks that writing them
// back reads the same.
func FuzzReadAllow(f *testing.F) {
	f.Add("web=dns:web.internal,uri:spiffe://corp/jobs")
	f.Add("cn:a b, dns:*.x")
	f.Add("a=uri:http://x/?a=b")
	f.Fuzz(func(t *testing.T, s string) {
		for _, e := range strings.Split(s, ",") {
			if e = strings.TrimSpace(e); strings.HasPrefix(e, "/") || strings.HasPrefix(e, ".") {
				return // a file name: not read here
			}
		}
		rules, files, err := readAllow(s)
		if err != nil || files != 0 {
			return
		}
		var entries []string
		for _, r := range rules {
			entries = append(entries, r.String())
		}
		again, _, err := readAllow(strings.Join(entries, ","))
		if err != nil {
			t.Fatalf("re-read of %q: %v", strings.Join(entries, ","), err)
		}
		if len(again) != len(rules) || len(rules) > 0 && !reflect.DeepEqual(again, rules) {
			t.Fatalf("round trip %v -> %v", rules, again)
		}
	})
}

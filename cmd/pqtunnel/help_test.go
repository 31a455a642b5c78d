package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/config"
)

func TestHelpListsEveryVariableAndDefault(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"help"}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("help exited %d: %s", code, stderr.String())
	}
	lines := strings.Split(stdout.String(), "\n")
	vars := config.Variables()
	if len(vars) == 0 {
		t.Fatal("config.Variables is empty")
	}
	for _, v := range vars {
		if v.Name == "" {
			t.Errorf("Vars.%s has no env tag", v.Field)
			continue
		}
		if v.Help == "" {
			t.Errorf("Vars.%s (%s) has no help tag", v.Field, v.Name)
		}
		var line string
		for _, l := range lines {
			if fields := strings.Fields(l); len(fields) > 0 && fields[0] == v.Name {
				line = l
				break
			}
		}
		if line == "" {
			t.Errorf("help does not list %s", v.Name)
			continue
		}
		if v.Default != "" && !strings.Contains(line, v.Default) {
			t.Errorf("help line for %s does not show its default %q: %q", v.Name, v.Default, line)
		}
	}
	for _, cmd := range []string{"keygen", "pin", "demo", "version"} {
		if !strings.Contains(stdout.String(), "pqtunnel "+cmd) {
			t.Errorf("help does not mention 'pqtunnel %s'", cmd)
		}
	}
	if strings.Contains(stdout.String(), "%!") {
		t.Errorf("help has a formatting error:\n%s", stdout.String())
	}
}

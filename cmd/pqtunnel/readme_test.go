package main

import (
	"os"
	"strings"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/config"
)

// The README's variable table must list every variable with the default
// that 'pqtunnel help' prints, so documentation cannot drift from the code.
func TestReadmeListsEveryVariable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(readme), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`PQT_") {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		rows[name] = strings.Trim(strings.TrimSpace(cells[2]), "`")
	}
	for _, v := range config.Variables() {
		name, def := v.Name, v.Default
		got, ok := rows[name]
		if !ok {
			t.Errorf("README.md has no table row for %s", name)
			continue
		}
		if def == "" {
			def = "–"
		}
		if got != def {
			t.Errorf("README.md gives %s default %q, the code %q", name, got, def)
		}
		delete(rows, name)
	}
	for name := range rows {
		t.Errorf("README.md documents %s, which pqtunnel does not read", name)
	}
}

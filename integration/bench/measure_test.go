package main

import (
	"bytes"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestPerOp(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after []float64
		ops           int
		want          []float64
	}{
		{"two sides", []float64{1.0, 2.0}, []float64{1.5, 2.25}, 1000, []float64{500, 250}},
		{"no sides (direct)", nil, nil, 1000, []float64{}},
		{"no operations", []float64{1}, []float64{2}, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := perOp(tc.before, tc.after, tc.ops)
			if len(got) != len(tc.want) || (tc.want == nil) != (got == nil) {
				t.Fatalf("perOp = %v, want %v", got, tc.want)
			}
			for i := range got {
				if math.Abs(got[i]-tc.want[i]) > 1e-9 {
					t.Fatalf("perOp = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// The report prints the CPU per connection of each side, which tells a
// change in what a connection costs from a change in the machine's load.
func TestReportConnCPU(t *testing.T) {
	c := newCollector()
	c.add("cpu_sequential", "µs/conn", "tcp/dial", 0, 411)
	c.add("cpu_sequential", "µs/conn", "tcp/listen", 0, 433)
	r := &Result{ConnCPU: c.figures()}
	var out bytes.Buffer
	writeTable(&out, r)
	lines := strings.Split(out.String(), "\n")
	head := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "CPU PER CONNECT + ECHO + CLOSE (µs/conn)") })
	if head < 0 {
		t.Fatalf("no per-connection CPU section in\n%s", out.String())
	}
	for _, want := range [][]string{{"sequential", "tcp", "dial", "411.0", "411.0–411.0"}, {"tcp", "listen", "433.0", "433.0–433.0"}} {
		found := false
		for _, l := range lines[head+1 : min(head+3, len(lines))] {
			if slices.Equal(strings.Fields(l), want) {
				found = true
			}
		}
		if !found {
			t.Errorf("per-connection CPU section lacks row %v:\n%s", want, strings.Join(lines[head:min(head+3, len(lines))], "\n"))
		}
	}
}

package main

import (
	"bytes"
	"encoding/csv"
	"math"
	"strconv"
	"testing"
)

// redisCSV is redis-benchmark --csv output for one GET row, as it prints it.
func redisCSV(t testing.TB, rps, p50 float64) []byte {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	w.UseCRLF = false
	rows := [][]string{
		{"test", "rps", "avg_latency_ms", "min_latency_ms", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "max_latency_ms"},
		{"GET", strconv.FormatFloat(rps, 'f', 2, 64), "0.5", "0.1", strconv.FormatFloat(p50, 'f', 3, 64), "1", "2", "3"},
	}
	if err := w.WriteAll(rows); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestParseRedisCSV(t *testing.T) {
	got, err := parseRedisCSV([]byte("\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"GET\",\"8474.58\",\"4.631\",\"0.456\",\"3.127\",\"11.407\",\"35.807\",\"36.511\"\n"))
	if err != nil || got.rps != 8474.58 || got.p50ms != 3.127 {
		t.Fatalf("parse redis-benchmark 7.0 output: %+v, %v", got, err)
	}
	for _, bad := range []string{"", "\"test\",\"rps\"\n", "\"test\",\"rps\",\"p50_latency_ms\"\n\"SET\",\"1\",\"2\"\n", "\"test\",\"rps\",\"p50_latency_ms\"\n\"GET\",\"x\",\"2\"\n"} {
		if _, err := parseRedisCSV([]byte(bad)); err == nil {
			t.Errorf("parse %q: no error", bad)
		}
	}
}

// Whatever redis-benchmark prints, parsing fails cleanly or yields the
// values of its GET row; what the encoder wrote parses back to its values.
func FuzzParseRedisCSV(f *testing.F) {
	f.Add(8474.58, 3.127)
	f.Add(0.0, 0.0)
	f.Add(123456.78, 0.015)
	f.Fuzz(func(t *testing.T, rps, p50 float64) {
		if math.IsNaN(rps) || math.IsNaN(p50) {
			return // NaN equals nothing, not even itself
		}
		out := redisCSV(t, rps, p50)
		got, err := parseRedisCSV(out)
		if err != nil {
			// Only values that do not print as numbers (NaN, Inf) may fail.
			if _, perr := strconv.ParseFloat(strconv.FormatFloat(rps, 'f', 2, 64), 64); perr == nil {
				if _, perr := strconv.ParseFloat(strconv.FormatFloat(p50, 'f', 3, 64), 64); perr == nil {
					t.Fatalf("parse %q: %v", out, err)
				}
			}
			return
		}
		wantRPS, _ := strconv.ParseFloat(strconv.FormatFloat(rps, 'f', 2, 64), 64)
		wantP50, _ := strconv.ParseFloat(strconv.FormatFloat(p50, 'f', 3, 64), 64)
		if got.rps != wantRPS || got.p50ms != wantP50 {
			t.Fatalf("parse %q: %+v, want rps %v p50 %v", out, got, wantRPS, wantP50)
		}
		_, _ = parseRedisCSV(out[:len(out)/2]) // a cut output must not panic
	})
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// writeJSON writes r to path, replacing it.
func writeJSON(path string, r *Result) error { return writeJSONValue(path, r) }

// writeJSONValue writes v as JSON to path, replacing it.
func writeJSONValue(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

var figureTitles = map[string]string{
	"upload_1_stream":    "upload, 1 stream",
	"upload_4_streams":   "upload, 4 streams",
	"download_1_stream":  "download, 1 stream",
	"download_4_streams": "download, 4 streams",
	"sequential_rate":    "sequential rate",
	"sequential_p50":     "sequential p50",
	"sequential_p99":     "sequential p99",
	"concurrent_32_rate": "32 concurrent rate",
	"concurrent_32_p50":  "32 concurrent p50",
	"concurrent_32_p99":  "32 concurrent p99",

	"redis_get_persistent_50":     "GET, 50 persistent clients",
	"redis_get_persistent_50_p50": "  p50",
	"redis_get_new_conn_8":        "GET, new conn per request, 8 clients",
	"redis_get_new_conn_8_p50":    "  p50",
}

func title(fig string) string {
	fig = strings.TrimPrefix(fig, "cpu_")
	if t, ok := figureTitles[fig]; ok {
		return t
	}
	return strings.ReplaceAll(fig, "_", " ")
}

// num prints v with about four significant digits.
func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 1000 || v <= -1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.1f", v)
	case v >= 10 || v <= -10:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func minMax(s Stat) string {
	if len(s.Samples) == 0 {
		return "-"
	}
	return num(s.Min) + "–" + num(s.Max)
}

func errNote(errs []string) string {
	if len(errs) == 0 {
		return ""
	}
	return fmt.Sprintf("  (%d failed: %s)", len(errs), truncate(errs[0], 100))
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// writeTable prints the result as a few short tables.
func writeTable(w io.Writer, r *Result) {
	m := r.Meta
	kind := "full"
	if m.Smoke {
		kind = "smoke"
	}
	fmt.Fprintf(w, "pqtunnel bench (%s) %s  %.0f s  %s  %d CPUs  reps=%d  bulk window %s  rate window %s  idle conns %d\n",
		kind, m.Started.Format("2006-01-02 15:04:05Z07:00"), m.Seconds, m.Go, m.CPUs, m.Reps, m.BulkWindow, m.RateWindow, m.IdleConns)
	fmt.Fprintf(w, "load average %s at start, %s at end; figures are median and min–max over the repetitions;\n", m.LoadStart, m.LoadEnd)
	fmt.Fprintln(w, "×direct (×X25519) is the median over the repetitions of the ratio to direct (X25519) measured right before or after it")
	for _, n := range m.Notes {
		fmt.Fprintln(w, "note:", n)
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	section := func(head string) {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, head)
	}
	figures := func(figs []Figure) {
		last := ""
		for _, f := range figs {
			name := ""
			if f.Figure != last {
				name, last = title(f.Figure)+" ("+f.Unit+")", f.Figure
			}
			ratio := "-"
			if f.RatioToDirect > 0 {
				ratio = fmt.Sprintf("%.2f×", f.RatioToDirect)
			}
			if f.AddedToDirect != nil {
				ratio += fmt.Sprintf(" (+%s ms)", num(*f.AddedToDirect))
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s%s\n", name, f.Mode, num(f.Median), minMax(f.Stat), ratio, errNote(f.Errors))
		}
	}
	section("BULK THROUGHPUT (1 MB = 10^6 bytes)\tmode\tmedian\tmin–max\t×direct")
	figures(r.Bulk)
	section("CONNECT + 1-BYTE ECHO + CLOSE\tmode\tmedian\tmin–max\t×direct")
	figures(r.ConnRate)

	if rows := terminatorRows(r); len(rows) > 0 {
		section("TERMINATED TLS ×direct, median (min–max) of the paired ratios\t" + modeTLS + "\t" + modeGhostunnel)
		for _, row := range rows {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", row[0], row[1], row[2])
		}
	}
	if len(r.Redis) > 0 {
		section("REDIS-BENCHMARK\tmode\tmedian\tmin–max\t×direct")
		figures(r.Redis)
	}
	perSide := func(figs []Figure) {
		last := ""
		for _, f := range figs {
			name := ""
			if f.Figure != last {
				name, last = title(f.Figure), f.Figure
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s%s\n", name, f.Mode, f.Side, num(f.Median), minMax(f.Stat), errNote(f.Errors))
		}
	}
	section("CPU PER GB MOVED (s/GB)\tmode\tside\tmedian\tmin–max")
	perSide(r.CPU)
	if len(r.ConnCPU) > 0 {
		section("CPU PER CONNECT + ECHO + CLOSE (µs/conn)\tmode\tside\tmedian\tmin–max")
		perSide(r.ConnCPU)
	}
	if len(r.RedisCPU) > 0 {
		section("CPU PER REDIS REQUEST (µs/req)\tmode\tside\tmedian\tmin–max")
		perSide(r.RedisCPU)
	}

	section("TUNNEL ESTABLISHMENT\tgroup\thandshakes/s\tmin–max\t×X25519 time\tp50 ms\tClientHello/ServerHello B\tfirst flight B/pkts")
	for _, h := range r.Handshake {
		ratio := "-"
		if h.TimeRatioToX25519 > 0 {
			ratio = fmt.Sprintf("%.2f×", h.TimeRatioToX25519)
		}
		hello, flight := "-", "-"
		if h.ClientHello > 0 {
			hello = fmt.Sprintf("%d/%d", h.ClientHello, h.ServerHello)
		}
		if h.FirstFlight > 0 {
			flight = fmt.Sprintf("%d/%d", h.FirstFlight, h.FirstFlightPkts)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s%s\n", h.Transport, h.Group, num(h.PerSecond.Median), minMax(h.PerSecond), ratio, num(h.HandshakeMs.Median), hello, flight, errNote(h.Errors))
	}

	section("IDLE CONNECTIONS\tside\tRSS base→loaded MiB\tRSS/conn KiB\theap+stack/conn KiB\tgoroutines base→loaded (per conn)\tafter close: goroutines, fds, RSS MiB")
	for _, mf := range r.Memory {
		name := fmt.Sprintf("%s: %d of %d opened in %.1f s", mf.Mode, mf.Opened, mf.Requested, mf.OpenSeconds)
		if len(mf.Sides) == 0 {
			fmt.Fprintf(tw, "  %s\t-\t-\t-\t-\t-\t-\t-%s\n", name, errNote(mf.Errors))
		}
		for i, s := range mf.Sides {
			if i > 0 {
				name = ""
			}
			note := ""
			if i == len(mf.Sides)-1 {
				note = errNote(mf.Errors)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%.1f→%.1f\t%s\t%s+%s\t%.0f→%.0f (%.2f)\t%.0f (%s), %.0f (base %.0f), %.1f (%s)%s\n", name, s.Side,
				s.BaselineRSSKiB/1024, s.LoadedRSSKiB/1024, num(s.RSSPerConnKiB), num(s.HeapPerConnKiB), num(s.StackPerConnKiB),
				s.BaselineGoroutines, s.LoadedGoroutines, s.GoroutinesPerConn,
				s.AfterGoroutines, backOrNot(s.Returned), s.AfterFDs, s.BaselineFDs, s.AfterRSSKiB/1024, backOrNot(s.RSSReturned), note)
		}
	}

	_ = tw.Flush() // stdout; nothing to do if it fails
	writeTargets(w, r.Targets)
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "\n%d measurement(s) failed:\n", len(r.Errors))
		for _, e := range r.Errors {
			fmt.Fprintln(w, "  -", truncate(e, 400))
		}
	}
}

func backOrNot(b bool) string {
	if b {
		return "back"
	}
	return "not back"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// terminatorRows are the tls phase's figures with pqtunnel's and
// ghostunnel's ratio to direct side by side; none when ghostunnel was not
// measured.
func terminatorRows(r *Result) [][3]string {
	var rows [][3]string
	for _, figs := range [][]Figure{r.Bulk, r.ConnRate} {
		for _, f := range figs {
			if f.Mode != modeGhostunnel {
				continue
			}
			rows = append(rows, [3]string{title(f.Figure) + " (" + f.Unit + ")", ratioSpread(findFigure(figs, f.Figure, modeTLS)), ratioSpread(&f)})
		}
	}
	return rows
}

// ratioSpread prints f's ratio to direct with the range of its paired
// ratios, "-" when it has none.
func ratioSpread(f *Figure) string {
	if f == nil || len(f.PairedRatios) == 0 {
		return "-"
	}
	s := newStat(f.PairedRatios)
	return fmt.Sprintf("%.2f× (%.2f–%.2f)", f.RatioToDirect, s.Min, s.Max)
}

// writeTargets prints targets as a table, each met or missed, and how
// many were met.
func writeTargets(w io.Writer, targets []Target) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "TARGETS\twant\tvalue\t")
	met := 0
	for _, t := range targets {
		verdict := "MISS"
		if t.Met {
			verdict, met = "met", met+1
		}
		v := num(t.Value) + " " + t.Unit
		if t.Unit == "bool" {
			v = yesNo(t.Value != 0)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", t.Name, t.Want, v, verdict)
	}
	_ = tw.Flush() // stdout; nothing to do if it fails
	fmt.Fprintf(w, "\n%d of %d targets met.\n", met, len(targets))
}

package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// grownSuffix ends the names of the figures taken over tunnels that came
// up before the RTT grew, at once after it grew; grownLateSuffix those
// taken grownLate after it grew.
const (
	grownSuffix     = "_grown"
	grownLateSuffix = "_grown_late"
	grownLate       = 15 * time.Second
)

var wanFigureTitles = map[string]string{
	"upload_1_stream":                     "upload 1 stream (MB/s)",
	"download_1_stream":                   "download 1 stream (MB/s)",
	"upload_8_streams":                    "upload 8 streams (MB/s)",
	"download_8_streams":                  "download 8 streams (MB/s)",
	"rr_p50":                              "request/response p50 (ms)",
	"rr_p99":                              "request/response p99 (ms)",
	"first_byte":                          "connect to first byte p50 (ms)",
	"rr_p50_loaded":                       "request/response p50 beside 2 downloads (ms)",
	"rr_p99_loaded":                       "request/response p99 beside 2 downloads (ms)",
	"establish":                           "tunnel establishment p50 (ms)",
	"upload_1_stream" + grownSuffix:       "upload 1 stream, RTT grew after up (MB/s)",
	"download_1_stream" + grownSuffix:     "download 1 stream, RTT grew after up (MB/s)",
	"upload_1_stream" + grownLateSuffix:   "upload 1 stream, 15 s after RTT grew (MB/s)",
	"download_1_stream" + grownLateSuffix: "download 1 stream, 15 s after RTT grew (MB/s)",
}

var wanFigureOrder = []string{"upload_1_stream", "download_1_stream", "upload_8_streams", "download_8_streams",
	"upload_1_stream" + grownSuffix, "download_1_stream" + grownSuffix,
	"upload_1_stream" + grownLateSuffix, "download_1_stream" + grownLateSuffix, "rr_p50", "rr_p99", "first_byte", "rr_p50_loaded", "rr_p99_loaded", "establish"}

// writeWANTable prints the WAN result as one table: a block of rows per
// cell, one column per mode, tunnelled modes with their ratio to direct
// (throughput) or the milliseconds they add (latency).
func writeWANTable(w io.Writer, r *WANResult) {
	m := r.Meta
	kind := "full"
	if m.Smoke {
		kind = "smoke"
	}
	fmt.Fprintf(w, "pqtunnel bench -wan (%s) %s  %.0f s  %s  %d CPUs  rate cap %.0f Mbit/s each way, queue %d KiB, bulk window max(%s, 10 RTT) after max(%s, 5 RTT)\n",
		kind, m.Started.Format("2006-01-02 15:04:05Z07:00"), m.Seconds, m.Go, m.CPUs, m.RateMbit, m.QueueBytes>>10, m.BulkWindow, m.Warmup)
	fmt.Fprintf(w, "load average %s at start, %s at end; kernel congestion control %s (available: %s); one sample per figure and cell\n",
		m.LoadStart, m.LoadEnd, m.DefaultCC, strings.Join(m.AvailableCC, " "))
	fmt.Fprintln(w, "direct is TCP from the client's namespace to the origin's over the link; tcp, quic and auto go through a dial and a listen side; ×d is the ratio to direct, ×t quic's to tcp, +ms the latency added to direct's")
	fmt.Fprintln(w, "2 relays (latency only) is a plain TCP relay process in each namespace, on the sides' hops without encryption or multiplexing: what it adds, any two-process tunnel adds")
	fmt.Fprintln(w, "RTT grew after up: the sides came up over the link without its delay, which was then added; measured at once and (not in a smoke run) 15 s later, direct again beside them")
	for _, n := range m.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	modes := []string{modeDirect}
	for _, cc := range []string{"cubic", "bbr"} {
		if cc != m.DefaultCC {
			modes = append(modes, directCC(cc))
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "link\tfigure\tdirect (" + m.DefaultCC + ")"
	for _, md := range modes[1:] {
		head += "\t" + strings.ReplaceAll(md, "_", " ")
	}
	head += "\t2 relays\t\ttcp\t\tquic\t\t\tauto\t\t"
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, head)
	var emulator []string // a line per cell, after the table: too wide for a column
	for _, c := range r.Cells {
		name := c.Cell
		for _, fig := range wanFigureOrder {
			if !hasFigure(c.Figures, fig) {
				continue // not measured in this run (-only)
			}
			row := name + "\t" + wanFigureTitles[fig]
			name = ""
			for _, md := range modes {
				row += "\t" + figValue(c.Figures, fig, md)
			}
			for _, md := range []string{modeRelays, modeTCP, modeQUIC} {
				row += "\t" + figValue(c.Figures, fig, md) + "\t" + figRatio(c.Figures, fig, md)
			}
			row += "\t" + quicToTCP(c.Figures, fig)
			row += "\t" + figValue(c.Figures, fig, modeAuto) + "\t" + figRatio(c.Figures, fig, modeAuto)
			fmt.Fprintln(tw, row+"\t")
		}
		drops := fmt.Sprintf("drops loss/queue %d/%d a→b %d/%d b→a, queue peak %d/%d KiB",
			c.Link[0].DroppedLoss, c.Link[0].DroppedQueue, c.Link[1].DroppedLoss, c.Link[1].DroppedQueue, c.Link[0].MaxQueue>>10, c.Link[1].MaxQueue>>10)
		emulator = append(emulator, fmt.Sprintf("%s: %s s in %.0f s (%.0f%% of a core), %.2f GB: %s",
			c.Cell, num(c.EmulatorCPU), c.Seconds, 100*c.EmulatorCore, c.EmulatorGB, drops))
	}
	if len(r.Blackhole) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintf(tw, "UDP blackhole %s (both ways, rtt 20ms)\tmode\tclients answered during\tlongest wait (s)\trecovery after (s)\t\t\t\t\n", m.BlackholeTime)
		for _, b := range r.Blackhole {
			answered, longest := 0, 0.0
			for _, d := range b.During {
				if d.Answered {
					answered++
				}
				longest = max(longest, d.Seconds)
			}
			rec := "none in 60 s"
			if b.RecoverySeconds >= 0 {
				rec = num(b.RecoverySeconds)
			}
			fmt.Fprintf(tw, "\t%s\t%d of %d\t%s\t%s\t%s\t\t\t\n", b.Mode, answered, len(b.During), num(longest), rec, truncate(b.Error, 80))
		}
	}
	if a := r.AutoStart; a != nil {
		fmt.Fprintf(tw, "auto dial side started with UDP blackholed\t%s\tfirst tunnel after (s)\t%s\t%s\t\t\t\t\n", a.Transport, num(a.Seconds), truncate(a.Error, 80))
	}
	_ = tw.Flush() // stdout; nothing to do if it fails
	if len(emulator) > 0 {
		fmt.Fprintln(w, "\nemulator CPU")
		for _, e := range emulator {
			fmt.Fprintln(w, "  "+e)
		}
	}
	if len(r.Targets) > 0 {
		writeTargets(w, r.Targets)
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "\n%d measurement(s) failed:\n", len(r.Errors))
		for _, e := range r.Errors {
			fmt.Fprintln(w, "  -", truncate(e, 400))
		}
	}
}

func hasFigure(figs []Figure, fig string) bool {
	for _, f := range figs {
		if f.Figure == fig {
			return true
		}
	}
	return false
}

// quicToTCP is the ratio of quic's median to tcp's, for throughput.
func quicToTCP(figs []Figure, fig string) string {
	var q, t float64
	for _, f := range figs {
		if f.Figure != fig || f.Unit != "MB/s" || len(f.Samples) == 0 {
			continue
		}
		switch f.Mode {
		case modeQUIC:
			q = f.Median
		case modeTCP:
			t = f.Median
		}
	}
	if q == 0 || t == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f×t", q/t)
}

func figValue(figs []Figure, fig, mode string) string {
	for _, f := range figs {
		if f.Figure == fig && f.Mode == mode {
			if len(f.Samples) == 0 {
				return "failed"
			}
			return num(f.Median)
		}
	}
	return "-"
}

func figRatio(figs []Figure, fig, mode string) string {
	for _, f := range figs {
		if f.Figure != fig || f.Mode != mode || f.RatioToDirect == 0 {
			continue
		}
		if f.AddedToDirect != nil {
			return fmt.Sprintf("%+.2fms", *f.AddedToDirect)
		}
		return fmt.Sprintf("%.2f×d", f.RatioToDirect)
	}
	return ""
}

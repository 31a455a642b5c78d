package main

import (
	"fmt"
	"math"
	"strings"
)

// The WAN targets, which the run checks against what it measured.
const (
	wanTCPBulkMin       = 0.90 // tcp 1-stream bulk over direct with the same congestion control
	wanTCPGrownMin      = 0.70 // the same when the RTT grew after the tunnel was up
	wanLossyOverCUBIC   = 10   // the default configuration over direct CUBIC at 80 ms + 1 %
	wanQUICOverTCPMin   = 0.80 // quic bulk over tcp bulk, no loss
	wanAddedP50MaxMs    = 0.2  // request/response p50 added to direct's
	wanFirstByteSlackMs = 1    // a new client's first answer byte after one RTT
	wanBlackholeMaxS    = 3    // clients during a blackhole refused or carried within; recovery within
)

// wanDefaultTransport is PQT_TRANSPORT's default: what "the default
// configuration" runs.
const wanDefaultTransport = modeAuto

var wanBulkFigures = []string{"upload_1_stream", "download_1_stream", "upload_8_streams", "download_8_streams"}

// checkWANTargets evaluates the WAN targets on r, one row per
// target and cell (or mode) that the run measured; a target whose figures
// the run did not take (-only, -wan-rtt) has no row.
func checkWANTargets(r *WANResult) []Target {
	var out []Target
	// The tcp transport's sockets run BBR where the kernel offers it, so
	// "the same congestion control" is direct with BBR.
	sameCC := modeDirect
	if r.Meta.DefaultCC != "bbr" {
		sameCC = directCC("bbr")
	}
	cubic := modeDirect
	if r.Meta.DefaultCC != "cubic" {
		cubic = directCC("cubic")
	}
	for _, c := range r.Cells {
		clean := c.Loss == 0
		longRTT := c.RTTms == 20 || c.RTTms == 80
		if clean && longRTT {
			if v, which, ok := minRatio(c.Figures, []string{"upload_1_stream", "download_1_stream"}, modeTCP, sameCC); ok {
				out = append(out, atLeast(c.Cell+": tcp 1-stream bulk ÷ direct "+ccName(sameCC, r.Meta.DefaultCC)+" (lowest: "+which+")", v, wanTCPBulkMin))
			}
			if v, which, ok := minRatio(c.Figures, []string{"upload_1_stream" + grownSuffix, "download_1_stream" + grownSuffix}, modeTCP, modeDirect); ok {
				out = append(out, atLeast(c.Cell+": tcp 1-stream bulk at once after the RTT grew ÷ direct (lowest: "+which+")", v, wanTCPGrownMin))
			}
		}
		if c.RTTms == 80 && math.Abs(c.Loss-0.01) < 1e-9 {
			if v, which, ok := minRatio(c.Figures, []string{"upload_1_stream", "download_1_stream"}, wanDefaultTransport, cubic); ok {
				out = append(out, atLeast(c.Cell+": default ("+wanDefaultTransport+") 1-stream bulk ÷ direct CUBIC (lowest: "+which+")", v, wanLossyOverCUBIC))
			}
		}
		if clean {
			if v, which, ok := minRatio(c.Figures, wanBulkFigures, modeQUIC, modeTCP); ok {
				out = append(out, atLeast(c.Cell+": quic bulk ÷ tcp bulk (lowest: "+which+")", v, wanQUICOverTCPMin))
			}
			floor := ""
			if f := findFigure(c.Figures, "rr_p50", modeRelays); f != nil && f.AddedToDirect != nil {
				floor = fmt.Sprintf(" (2 plain relays add %+.2f ms)", *f.AddedToDirect)
			}
			for _, m := range []string{modeTCP, modeQUIC} {
				if f := findFigure(c.Figures, "rr_p50", m); f != nil && f.AddedToDirect != nil {
					out = append(out, Target{Name: c.Cell + ": " + m + " request/response p50 added" + floor,
						Want: fmt.Sprintf("≤ %.2f ms", wanAddedP50MaxMs), Unit: "ms", Value: *f.AddedToDirect, Met: *f.AddedToDirect <= wanAddedP50MaxMs})
				}
			}
		}
		if c.RTTms == 80 && clean {
			// One RTT is what direct's request/response p50 took over the
			// same link, the emulator's own delay included.
			rtt := c.RTTms
			if f := findFigure(c.Figures, "rr_p50", modeDirect); f != nil {
				rtt = f.Median
			}
			for _, m := range []string{modeTCP, modeQUIC, modeAuto} {
				if f := findFigure(c.Figures, "first_byte", m); f != nil {
					over := f.Median - rtt
					out = append(out, Target{Name: fmt.Sprintf("%s: %s new client to first answer byte, beyond one RTT (%.2f ms)", c.Cell, m, rtt),
						Want: fmt.Sprintf("≤ %d ms", wanFirstByteSlackMs), Unit: "ms", Value: over, Met: over <= wanFirstByteSlackMs})
				}
			}
		}
	}
	for _, b := range r.Blackhole {
		longest, waited := 0.0, len(b.During) > 0 && b.Error == ""
		for _, d := range b.During {
			longest = math.Max(longest, d.Seconds)
		}
		out = append(out, Target{Name: fmt.Sprintf("UDP blackhole: %s, longest wait of the %d clients that arrived during it (answered or refused)", b.Mode, len(b.During)),
			Want: fmt.Sprintf("≤ %d s", wanBlackholeMaxS), Unit: "s", Value: longest, Met: waited && longest <= wanBlackholeMaxS})
		out = append(out, Target{Name: "UDP blackhole: " + b.Mode + ", recovery after the path returned",
			Want: fmt.Sprintf("≤ %d s", wanBlackholeMaxS), Unit: "s", Value: b.RecoverySeconds, Met: b.Error == "" && b.RecoverySeconds >= 0 && b.RecoverySeconds <= wanBlackholeMaxS})
	}
	return out
}

// minRatio is the lowest, over figs, of mode's median over base's in
// figs, with the figure it came from; ok is false when no figure has both.
func minRatio(all []Figure, figs []string, mode, base string) (v float64, which string, ok bool) {
	for _, fig := range figs {
		m, b := findFigure(all, fig, mode), findFigure(all, fig, base)
		if m == nil || b == nil || b.Median <= 0 {
			continue
		}
		if r := m.Median / b.Median; !ok || r < v {
			v, which, ok = r, strings.ReplaceAll(fig, "_", " "), true
		}
	}
	return v, which, ok
}

func atLeast(name string, v, want float64) Target {
	return Target{Name: name, Want: fmt.Sprintf("≥ %.2f×", want), Unit: "×", Value: v, Met: v >= want}
}

// ccName names the congestion control of a direct mode; direct itself
// runs the kernel's default, def.
func ccName(mode, def string) string {
	if cc, ok := strings.CutPrefix(mode, modeDirect+"_"); ok {
		def = cc
	}
	return strings.ToUpper(def)
}

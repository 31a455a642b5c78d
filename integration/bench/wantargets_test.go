package main

import (
	"strings"
	"testing"
)

// wanFig is one measured figure of a synthetic WAN cell.
func wanFig(fig, mode string, v float64) Figure {
	return Figure{Figure: fig, Mode: mode, Unit: "MB/s", Stat: newStat([]float64{v})}
}

// wanLatency is a latency figure with what it added to direct.
func wanLatency(fig, mode string, v, added float64) Figure {
	f := Figure{Figure: fig, Mode: mode, Unit: "ms", Stat: newStat([]float64{v})}
	if mode != modeDirect {
		f.AddedToDirect = &added
	}
	return f
}

// targetNamed returns the one target whose name has every part, failing
// the test unless exactly one has.
func targetNamed(t *testing.T, targets []Target, parts ...string) Target {
	t.Helper()
	var found []Target
	for _, tg := range targets {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(tg.Name, p)
		}
		if all {
			found = append(found, tg)
		}
	}
	if len(found) != 1 {
		t.Fatalf("targets named %q: %d of %d, want 1: %+v", parts, len(found), len(targets), targets)
	}
	return found[0]
}

// The WAN targets are read from the run's own figures: each is met or
// missed by its measured value, against the direct mode the issue names.
func TestWANTargetsJudgeEachGoalByTheRunsFigures(t *testing.T) {
	r := &WANResult{Meta: WANMeta{DefaultCC: "bbr"}}
	r.Cells = []WANCellResult{
		{Cell: "rtt 20ms loss 0%", RTTms: 20, Figures: []Figure{
			wanFig("upload_1_stream", modeDirect, 20), wanFig("upload_1_stream", modeTCP, 19), wanFig("upload_1_stream", modeQUIC, 18),
			wanFig("download_1_stream", modeDirect, 20), wanFig("download_1_stream", modeTCP, 17), wanFig("download_1_stream", modeQUIC, 10),
			wanFig("upload_1_stream"+grownSuffix, modeDirect, 20), wanFig("upload_1_stream"+grownSuffix, modeTCP, 15),
			wanFig("download_1_stream"+grownSuffix, modeDirect, 20), wanFig("download_1_stream"+grownSuffix, modeTCP, 16),
			wanLatency("rr_p50", modeDirect, 21, 0), wanLatency("rr_p50", modeTCP, 21.3, 0.3), wanLatency("rr_p50", modeQUIC, 21.1, 0.1),
			wanLatency("rr_p50", modeRelays, 21.25, 0.25),
		}},
		{Cell: "rtt 80ms loss 1%", RTTms: 80, Loss: 0.01, Figures: []Figure{
			wanFig("upload_1_stream", directCC("cubic"), 0.5), wanFig("upload_1_stream", modeAuto, 11),
			wanFig("download_1_stream", directCC("cubic"), 0.5), wanFig("download_1_stream", modeAuto, 4),
		}},
		{Cell: "rtt 80ms loss 0%", RTTms: 80, Figures: []Figure{
			wanLatency("rr_p50", modeDirect, 81, 0),
			wanLatency("first_byte", modeTCP, 81.9, 0), wanLatency("first_byte", modeQUIC, 82.4, 0),
		}},
	}
	r.Blackhole = []BlackholeMode{
		{Mode: modeTCP, During: []ClientOutcome{{Answered: true, Seconds: 0.1}, {Answered: true, Seconds: 0.2}}, RecoverySeconds: 0.05},
		{Mode: modeQUIC, During: []ClientOutcome{{Seconds: 2.8}, {Seconds: 8}}, RecoverySeconds: 1.4},
		{Mode: modeAuto, During: []ClientOutcome{{Answered: true, Seconds: 1}}, RecoverySeconds: -1},
	}
	targets := checkWANTargets(r)
	for _, c := range []struct {
		parts []string
		value float64
		met   bool
	}{
		// The lower of upload 0.95 and download 0.85, against direct BBR.
		{[]string{"rtt 20ms loss 0%", "tcp 1-stream bulk ÷ direct BBR"}, 0.85, false},
		{[]string{"rtt 20ms loss 0%", "RTT grew"}, 0.75, true},
		{[]string{"rtt 20ms loss 0%", "quic bulk ÷ tcp"}, 10.0 / 17, false},
		{[]string{"rtt 20ms loss 0%", "tcp request/response p50", "+0.25 ms"}, 0.3, false},
		{[]string{"rtt 20ms loss 0%", "quic request/response p50"}, 0.1, true},
		// Download moved 8× direct CUBIC, upload 22×.
		{[]string{"rtt 80ms loss 1%", "default (auto)"}, 8, false},
		// One RTT is direct's request/response p50, 81 ms.
		{[]string{"rtt 80ms loss 0%", "tcp new client"}, 0.9, true},
		{[]string{"rtt 80ms loss 0%", "quic new client"}, 1.4, false},
		{[]string{"blackhole: tcp, longest"}, 0.2, true},
		{[]string{"blackhole: quic, longest"}, 8, false},
		{[]string{"blackhole: quic, recovery"}, 1.4, true},
		{[]string{"blackhole: auto, recovery"}, -1, false},
	} {
		tg := targetNamed(t, targets, c.parts...)
		if diff := tg.Value - c.value; diff > 1e-9 || diff < -1e-9 || tg.Met != c.met {
			t.Errorf("%s: value %v met %v, want %v met %v", tg.Name, tg.Value, tg.Met, c.value, c.met)
		}
	}
	// Figures the run did not take give no target: no tcp bulk at 80 ms.
	for _, tg := range targets {
		if strings.Contains(tg.Name, "rtt 80ms loss 0%: tcp 1-stream") {
			t.Errorf("target %q from figures that were not measured", tg.Name)
		}
	}
	// On a kernel whose default is CUBIC, tcp is held to direct with BBR.
	r.Meta.DefaultCC = "cubic"
	r.Cells[0].Figures = append(r.Cells[0].Figures, wanFig("upload_1_stream", directCC("bbr"), 19), wanFig("download_1_stream", directCC("bbr"), 17))
	if tg := targetNamed(t, checkWANTargets(r), "rtt 20ms loss 0%", "tcp 1-stream bulk ÷ direct BBR"); tg.Value != 1 || !tg.Met {
		t.Errorf("against direct BBR on a CUBIC kernel: %+v, want 1× met", tg)
	}
}

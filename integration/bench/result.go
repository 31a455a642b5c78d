package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Result is the whole run, as written to the JSON file.
type Result struct {
	Meta     Meta     `json:"meta"`
	Bulk     []Figure `json:"bulk"`
	ConnRate []Figure `json:"conn_rate"`
	// ConnCPU is the CPU microseconds per connection of each side during
	// the connection-rate runs.
	ConnCPU   []Figure          `json:"conn_rate_cpu"`
	Handshake []HandshakeFigure `json:"handshake"`
	Memory    []MemoryFigure    `json:"memory"`
	CPU       []Figure          `json:"cpu"`
	// Redis is redis-benchmark GET (req/s, p50 ms); RedisCPU its CPU
	// microseconds per request, each side.
	Redis    []Figure `json:"redis"`
	RedisCPU []Figure `json:"redis_cpu"`
	Targets  []Target `json:"targets"`
	// Errors are the measurements that failed; their figures are missing
	// or partial.
	Errors []string `json:"errors"`
}

// Meta says how and where the run was made.
type Meta struct {
	Started         time.Time `json:"started"`
	Seconds         float64   `json:"seconds"`
	Smoke           bool      `json:"smoke"`
	Reps            int       `json:"reps"`
	BulkWindow      string    `json:"bulk_window"`
	Warmup          string    `json:"warmup"`
	RateWindow      string    `json:"rate_window"`
	HandshakeWindow string    `json:"handshake_window"`
	IdleConns       int       `json:"idle_conns"`
	MaxStreams      int       `json:"pqt_max_streams"`
	FileLimit       uint64    `json:"rlimit_nofile"`
	Go              string    `json:"go"`
	CPUs            int       `json:"cpus"`
	LoadStart       string    `json:"loadavg_start"`
	LoadEnd         string    `json:"loadavg_end"`
	Processes       []string  `json:"processes"`
	Notes           []string  `json:"notes"`
}

// Stat summarises the samples of one figure, one per repetition.
type Stat struct {
	Samples []float64 `json:"samples"`
	Median  float64   `json:"median"`
	Min     float64   `json:"min"`
	Max     float64   `json:"max"`
}

func newStat(samples []float64) Stat {
	s := Stat{Samples: samples}
	if len(samples) == 0 {
		return s
	}
	sorted := slices.Sorted(slices.Values(samples))
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	if n := len(sorted); n%2 == 1 {
		s.Median = sorted[n/2]
	} else {
		s.Median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
	return s
}

// Figure is one measured quantity in one mode.
type Figure struct {
	Figure string `json:"figure"`
	Mode   string `json:"mode"`
	// Side is dial or listen, for per-process figures (CPU).
	Side string `json:"side,omitempty"`
	Unit string `json:"unit"`
	Stat
	// RatioToDirect is the median over the repetitions of this sample
	// divided by the direct sample of the same repetition, which were
	// measured one right after the other, so load that changes during the
	// run cancels out.
	RatioToDirect float64 `json:"ratio_to_direct,omitempty"`
	// PairedRatios are those per-repetition ratios.
	PairedRatios []float64 `json:"paired_ratios,omitempty"`
	// RatioOfMedians is this median over the direct median.
	RatioOfMedians float64 `json:"ratio_of_medians,omitempty"`
	// AddedToDirect is the median per-repetition difference to direct (latencies).
	AddedToDirect *float64 `json:"added_to_direct,omitempty"`
	Errors        []string `json:"errors,omitempty"`
}

// HandshakeFigure is tunnel establishment with one group over one transport.
type HandshakeFigure struct {
	Transport string `json:"transport"`
	Group     string `json:"group"`
	// PerSecond is sequential handshakes per second: the inverse of the
	// median wall time of a full ProbeTunnel (dial, TLS, session proof both
	// ways, close) in each repetition.
	PerSecond Stat `json:"handshakes_per_second"`
	// HandshakeMs is the median Probe.Handshake (first packet to verified
	// proof, client side) of each repetition.
	HandshakeMs Stat `json:"handshake_ms"`
	// RateRatioToX25519 is the median per-repetition ratio of PerSecond to
	// X25519's; TimeRatioToX25519 is the same for time, the cost relative
	// to classical.
	RateRatioToX25519 float64 `json:"rate_ratio_to_x25519,omitempty"`
	TimeRatioToX25519 float64 `json:"time_ratio_to_x25519,omitempty"`
	// ClientHello and ServerHello are TLS record sizes over TCP.
	ClientHello int `json:"client_hello_bytes,omitempty"`
	ServerHello int `json:"server_hello_bytes,omitempty"`
	// FirstFlight and FirstFlightPkts are the QUIC first flight: the median
	// over one repetition's probes (see runHandshakes), the largest over the
	// repetitions.
	FirstFlight     int      `json:"first_flight_bytes,omitempty"`
	FirstFlightPkts int      `json:"first_flight_packets,omitempty"`
	Errors          []string `json:"errors,omitempty"`
}

// MemoryFigure is the idle-connection memory of one tunnelled path.
type MemoryFigure struct {
	Mode        string       `json:"mode"`
	Requested   int          `json:"requested"`
	Opened      int          `json:"opened"`
	OpenSeconds float64      `json:"open_seconds"`
	Sides       []SideMemory `json:"sides"`
	Errors      []string     `json:"errors,omitempty"`
}

// SideMemory is one process before, with, and after the idle connections.
type SideMemory struct {
	Side               string  `json:"side"`
	PID                int     `json:"pid"`
	BaselineRSSKiB     float64 `json:"baseline_rss_kib"`
	LoadedRSSKiB       float64 `json:"loaded_rss_kib"`
	AfterRSSKiB        float64 `json:"after_close_rss_kib"`
	BaselineHeapKiB    float64 `json:"baseline_heap_inuse_kib"`
	LoadedHeapKiB      float64 `json:"loaded_heap_inuse_kib"`
	AfterHeapKiB       float64 `json:"after_close_heap_inuse_kib"`
	BaselineStackKiB   float64 `json:"baseline_stack_inuse_kib"`
	LoadedStackKiB     float64 `json:"loaded_stack_inuse_kib"`
	AfterStackKiB      float64 `json:"after_close_stack_inuse_kib"`
	BaselineGoroutines float64 `json:"baseline_goroutines"`
	LoadedGoroutines   float64 `json:"loaded_goroutines"`
	AfterGoroutines    float64 `json:"after_close_goroutines"`
	BaselineFDs        float64 `json:"baseline_open_fds"`
	LoadedFDs          float64 `json:"loaded_open_fds"`
	AfterFDs           float64 `json:"after_close_open_fds"`
	RSSPerConnKiB      float64 `json:"rss_per_conn_kib"`
	HeapPerConnKiB     float64 `json:"heap_inuse_per_conn_kib"`
	StackPerConnKiB    float64 `json:"stack_inuse_per_conn_kib"`
	GoroutinesPerConn  float64 `json:"goroutines_per_conn"`
	// Returned: after close, goroutines and open files are back within 10
	// of baseline, so nothing leaked.
	Returned bool `json:"returned_to_baseline"`
	// RSSReturned: RSS gave back at least 90% of its growth within the
	// settle time. Go returns freed memory to the OS only after a GC cycle,
	// which an idle process may not run for up to two minutes.
	RSSReturned bool `json:"rss_returned"`
}

// Target is one of the goals, checked against this run.
type Target struct {
	Name  string  `json:"name"`
	Want  string  `json:"want"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	Met   bool    `json:"met"`
}

var modeOrder = []string{modeDirect, modeTCP, modeQUIC, modeAuto, modeTCP4Conn, modeQUIC4Conn, modeRelays, modeHAProxy, modeTLS, modeGhostunnel}

// collector gathers samples keyed by figure and mode (mode/side for
// per-process figures) and repetition as the run goes.
type collector struct {
	order   []string
	units   map[string]string
	samples map[string]map[string][]sample
	errs    map[string]map[string][]string
}

type sample struct {
	rep int
	v   float64
}

func newCollector() *collector {
	return &collector{units: map[string]string{}, samples: map[string]map[string][]sample{}, errs: map[string]map[string][]string{}}
}

func (c *collector) see(fig, unit string) {
	if _, ok := c.samples[fig]; !ok {
		c.order = append(c.order, fig)
		c.units[fig] = unit
		c.samples[fig] = map[string][]sample{}
		c.errs[fig] = map[string][]string{}
	}
}

func (c *collector) add(fig, unit, mode string, rep int, v float64) {
	c.see(fig, unit)
	c.samples[fig][mode] = append(c.samples[fig][mode], sample{rep, v})
}

func (c *collector) fail(fig, unit, mode string, err error) {
	c.see(fig, unit)
	c.errs[fig][mode] = append(c.errs[fig][mode], err.Error())
}

func values(ss []sample) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = s.v
	}
	return out
}

// figures builds one Figure per figure and mode, with ratios to direct;
// latency figures (unit ms) also get the difference.
func (c *collector) figures() []Figure {
	var out []Figure
	for _, fig := range c.order {
		byMode := c.samples[fig]
		var modes []string
		for m := range byMode {
			modes = append(modes, m)
		}
		for m := range c.errs[fig] {
			if _, ok := byMode[m]; !ok {
				modes = append(modes, m)
			}
		}
		slices.SortFunc(modes, compareModeKeys)
		directByRep := map[int]float64{}
		for _, s := range byMode[modeDirect] {
			directByRep[s.rep] = s.v
		}
		direct := newStat(values(byMode[modeDirect]))
		for _, m := range modes {
			mode, side, _ := strings.Cut(m, "/")
			f := Figure{Figure: fig, Mode: mode, Side: side, Unit: c.units[fig], Stat: newStat(values(byMode[m])), Errors: c.errs[fig][m]}
			var diffs []float64
			for _, s := range byMode[m] {
				if d, ok := directByRep[s.rep]; ok && d > 0 {
					f.PairedRatios = append(f.PairedRatios, s.v/d)
					diffs = append(diffs, s.v-d)
				}
			}
			if len(f.PairedRatios) > 0 {
				f.RatioToDirect = newStat(f.PairedRatios).Median
				f.RatioOfMedians = f.Median / direct.Median
				if f.Unit == "ms" && m != modeDirect {
					d := newStat(diffs).Median
					f.AddedToDirect = &d
				}
			}
			out = append(out, f)
		}
	}
	return out
}

func compareModeKeys(a, b string) int {
	am, as, _ := strings.Cut(a, "/")
	bm, bs, _ := strings.Cut(b, "/")
	if d := slices.Index(modeOrder, am) - slices.Index(modeOrder, bm); d != 0 {
		return d
	}
	return strings.Compare(as, bs)
}

func findFigure(figs []Figure, fig, mode string) *Figure {
	for i := range figs {
		if figs[i].Figure == fig && figs[i].Mode == mode && len(figs[i].Samples) > 0 {
			return &figs[i]
		}
	}
	return nil
}

// checkTargets evaluates the targets on r.
func checkTargets(r *Result) []Target {
	var out []Target
	ratio := func(figs []Figure, fig, mode, name string, want float64) {
		f := findFigure(figs, fig, mode)
		if f == nil {
			out = append(out, Target{Name: name, Want: fmt.Sprintf("≥ %.2f× direct", want), Unit: "×", Value: 0, Met: false})
			return
		}
		out = append(out, Target{Name: name, Want: fmt.Sprintf("≥ %.2f× direct", want), Unit: "×", Value: f.RatioToDirect, Met: f.RatioToDirect >= want})
	}
	for _, dir := range []string{"upload", "download"} {
		ratio(r.Bulk, dir+"_1_stream", modeTCP, "tcp "+dir+" 1 stream", 0.20)
		ratio(r.Bulk, dir+"_4_streams", modeTCP, "tcp "+dir+" 4 streams, 1 tunnel connection", 0.25)
		ratio(r.Bulk, dir+"_4_streams", modeTCP4Conn, "tcp "+dir+" 4 streams, 4 tunnel connections", 0.25)
		ratio(r.Bulk, dir+"_1_stream", modeQUIC, "quic "+dir+" 1 stream", 0.08)
		ratio(r.Bulk, dir+"_4_streams", modeQUIC4Conn, "quic "+dir+" 4 streams, 4 tunnel connections", 0.12)
		ratio(r.Bulk, dir+"_4_streams", modeQUIC, "quic "+dir+" 4 streams, 1 tunnel connection", 0.12)
	}
	for _, m := range []string{modeTCP, modeQUIC} {
		ratio(r.ConnRate, "sequential_rate", m, m+" sequential connection rate", 0.40)
		if f := findFigure(r.ConnRate, "sequential_p50", m); f != nil && f.AddedToDirect != nil {
			out = append(out, Target{Name: m + " sequential p50 added latency", Want: "≤ 0.50 ms", Unit: "ms", Value: *f.AddedToDirect, Met: *f.AddedToDirect <= 0.5})
		} else {
			out = append(out, Target{Name: m + " sequential p50 added latency", Want: "≤ 0.50 ms", Unit: "ms"})
		}
		ratio(r.ConnRate, "concurrent_32_rate", m, m+" 32-concurrent connection rate", 0.40)
	}
	for _, m := range []string{modeTCP, modeQUIC} {
		ratio(r.Redis, "redis_get_persistent_50", m, m+" Redis GET, 50 persistent clients", 0.50)
		ratio(r.Redis, "redis_get_new_conn_8", m, m+" Redis GET, new connection per request, 8 clients", 0.25)
	}
	for _, mf := range r.Memory {
		for _, s := range mf.Sides {
			out = append(out, Target{Name: fmt.Sprintf("%s %s RSS per idle connection (%d)", mf.Mode, s.Side, mf.Opened), Want: "≤ 16 KiB", Unit: "KiB", Value: s.RSSPerConnKiB, Met: mf.Opened > 0 && s.RSSPerConnKiB <= 16})
			out = append(out, Target{Name: fmt.Sprintf("%s %s goroutines and fds back to baseline after close", mf.Mode, s.Side), Want: "yes", Unit: "bool", Value: b2f(s.Returned), Met: s.Returned})
		}
	}
	for _, h := range r.Handshake {
		// The target is for tunnels; a terminated handshake has no ML-DSA
		// proof to dilute the key exchange's cost, so its ratio is reported only.
		if h.Group == "X25519" || h.Transport == modeTLS {
			continue
		}
		out = append(out, Target{Name: fmt.Sprintf("%s %s establishment vs X25519", h.Transport, h.Group), Want: "≤ 1.50× classical time", Unit: "×", Value: h.TimeRatioToX25519, Met: h.TimeRatioToX25519 > 0 && h.TimeRatioToX25519 <= 1.5})
	}
	return out
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

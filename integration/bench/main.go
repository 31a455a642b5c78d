// Command bench measures pqtunnel against direct loopback TCP on this
// machine. It builds the binary, runs an origin inside itself (echo, sink and
// source routes), starts listen and dial sides as separate processes for the
// TCP and the QUIC transport, and measures, alternating direct, TCP and QUIC
// in every repetition:
//
//   - bulk throughput of 1 and 4 parallel streams, upload and download;
//   - connection rate and latency of connect + 1-byte echo + close,
//     sequential and with 32 concurrent clients;
//   - a real client: redis-benchmark GET against a redis-server the
//     harness starts, with 50 persistent clients and with a new connection
//     per request (8 clients), and the CPU microseconds per request of
//     each side (skipped when redis-server is not installed);
//   - tunnel establishment (TLS with ML-DSA-65 + session proof) per key-exchange group,
//     as handshakes per second relative to classical X25519, with the
//     ClientHello/ServerHello sizes (TCP) and first flight (QUIC);
//   - RSS and goroutines of each side per idle proxied connection, and
//     after those connections close;
//   - CPU seconds per GB moved, each side;
//   - TLS terminated by a local pqtunnel (tls:// routes joined to the
//     origin, no tunnel): connection rate, 1-stream bulk, and full
//     handshakes per second per group relative to X25519 (phase tls);
//     with -ghostunnel, the same connection rates and bulk through
//     ghostunnel in server mode, alternating with pqtunnel.
//
// Each figure is printed as median and min–max over the repetitions with its
// ratio to direct from the same run; a table goes to stdout and the whole
// result as JSON to -out. Usage, from the module root:
//
//	go run ./integration/bench                 # full run, under five minutes
//	go run ./integration/bench -smoke          # about 20 s: checks that it works
//	go run ./integration/bench -out /tmp/r.json
//	go run ./integration/bench -only bulk,rate # some phases; the others are left out of the table
//	go run ./integration/bench -only tls -ghostunnel /path/to/ghostunnel
//
// It is not part of 'go test'. It does not tune the kernel; it raises its own
// RLIMIT_NOFILE, which the processes it starts inherit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pqtunnel/pqtunnel/integration/wan"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// defaultOut is -out's default; -wan changes it to bench-wan-result.json.
const defaultOut = "bench-result.json"

// options are the command line; zero durations and counts take the mode's default.
type options struct {
	smoke bool
	out   string
	bin   string
	reps  int
	// bulk is the measured window of one bulk transfer, after warm.
	bulk, warm time.Duration
	// rate is the measured window of one connection-rate run.
	rate time.Duration
	// handshake is how long one group is probed for, per repetition.
	handshake time.Duration
	// idle is the number of idle connections of the memory figure.
	idle int
	// settle bounds how long RSS may take to fall back after the idle
	// connections close.
	settle  time.Duration
	verbose bool
	// only names the phases to run; empty runs all.
	only []string
	// ghostunnel is a ghostunnel binary the tls phase also measures in
	// server mode; empty leaves that comparison out.
	ghostunnel string

	// wan runs the WAN matrix instead (see wan.go): round-trip times,
	// loss fractions, the rate cap in bits/s, the queue as time at that
	// rate, and how long UDP is blackholed (zero: not at all).
	wan          bool
	wanRTTs      []time.Duration
	wanLoss      []float64
	wanRate      float64
	wanQueue     time.Duration
	wanBlackhole time.Duration
	// wanSettle is how long auto's tunnel carries an upload before a
	// cell's bulk figures, so that they are a tunnel's that has seen the
	// path: auto moves off QUIC on a lossy one after about 10 s of traffic.
	wanSettle time.Duration
	// wanEnv are PQT_ settings every WAN side gets beside the harness's
	// own, to measure a setting on the bed.
	wanEnv map[string]string
}

var phaseNames = []string{"memory", "bulk", "rate", "redis", "handshake", "tls"}

// wanPhaseNames are the parts of a WAN run -only can choose: per cell,
// tunnel establishment, 1-stream and 8-stream bulk, request/response and
// connect-to-first-byte latency, request/response latency beside two
// downloads on the same path, and 1-stream bulk over tunnels that came up
// before the RTT grew; then the UDP blackhole.
var wanPhaseNames = []string{"establish", "bulk1", "bulk8", "latency", "loaded", "grow", "blackhole"}

// runs says whether phase is to be run.
func (o options) runs(phase string) bool { return len(o.only) == 0 || slices.Contains(o.only, phase) }

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.smoke, "smoke", false, "run a short variant (~20 s) that only checks the harness works")
	fs.StringVar(&o.out, "out", defaultOut, "file to write the JSON result to")
	fs.StringVar(&o.bin, "bin", "", "use this pqtunnel binary instead of building ./cmd/pqtunnel")
	fs.IntVar(&o.reps, "reps", 0, "repetitions of each figure (default 3, smoke 1)")
	fs.DurationVar(&o.bulk, "bulk", 0, "measured window of one bulk transfer (default 1.5s, smoke 300ms)")
	fs.DurationVar(&o.rate, "rate", 0, "measured window of one connection-rate run (default 1.5s, smoke 300ms)")
	fs.DurationVar(&o.handshake, "handshake", 0, "how long each key-exchange group is probed per repetition (default 800ms, smoke 200ms)")
	fs.IntVar(&o.idle, "idle", 0, "idle proxied connections for the memory figure (default 10000, smoke 500)")
	fs.BoolVar(&o.verbose, "v", false, "log each measurement to stderr as it is taken")
	only := fs.String("only", "", "run only these comma-separated phases: "+strings.Join(phaseNames, ",")+"; with -wan: "+strings.Join(wanPhaseNames, ","))
	fs.StringVar(&o.ghostunnel, "ghostunnel", "", "tls phase: also measure this ghostunnel binary in server mode, alternating with pqtunnel's terminator (empty: not compared)")
	fs.BoolVar(&o.wan, "wan", false, "run the WAN matrix over an emulated link between two network namespaces (needs root)")
	rtts := fs.String("wan-rtt", "", "WAN round-trip times in ms, comma-separated (default 2,20,80,200; smoke 20)")
	losses := fs.String("wan-loss", "", "WAN random loss in percent, comma-separated (default 0,0.1,1; smoke 0,1)")
	fs.Float64Var(&o.wanRate, "wan-rate", 200, "WAN rate cap in Mbit/s, each direction")
	fs.DurationVar(&o.wanQueue, "wan-queue", 50*time.Millisecond, "WAN queue bound, as time at the rate cap")
	blackhole := fs.Duration("wan-blackhole", -1, "WAN UDP blackhole duration, 0 to leave it out (default 10s, smoke 2s)")
	sideEnv := fs.String("wan-env", "", "WAN: PQT_ settings every side gets, comma-separated NAME=VALUE (such as PQT_MAX_STREAMS=63 to measure a larger initial stream window); empty: the defaults")
	settle := fs.Duration("wan-settle", -1, "WAN: how long auto's tunnel carries a 1-stream upload before a cell's bulk figures, so that they are those of a tunnel that has seen the path (auto moves off QUIC on a lossy path after about 10 s of traffic); 0 measures auto as it comes up (default 15s, smoke 0)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.wanRate *= 1e6
	if o.wan {
		o.wanSettle = *settle
		if *settle < 0 {
			o.wanSettle = 15 * time.Second
			if o.smoke {
				o.wanSettle = 0
			}
		}
		if err := o.parseWAN(*rtts, *losses, *blackhole); err != nil {
			return o, err
		}
		env, err := parseSideEnv(*sideEnv)
		if err != nil {
			return o, err
		}
		o.wanEnv = env
	}
	if *only != "" {
		names := phaseNames
		if o.wan {
			names = wanPhaseNames
		}
		for p := range strings.SplitSeq(*only, ",") {
			if !slices.Contains(names, p) {
				return o, fmt.Errorf("-only: unknown phase %q (phases: %s)", p, strings.Join(names, ","))
			}
			o.only = append(o.only, p)
		}
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	def := func(d *time.Duration, full, smoke time.Duration) {
		if *d <= 0 {
			*d = full
			if o.smoke {
				*d = smoke
			}
		}
	}
	def(&o.bulk, 1500*time.Millisecond, 300*time.Millisecond)
	if o.wan {
		def(&o.warm, 500*time.Millisecond, 200*time.Millisecond)
	}
	def(&o.warm, 250*time.Millisecond, 100*time.Millisecond)
	def(&o.rate, 1500*time.Millisecond, 300*time.Millisecond)
	def(&o.handshake, 800*time.Millisecond, 200*time.Millisecond)
	def(&o.settle, 5*time.Second, 2*time.Second)
	if o.reps <= 0 {
		o.reps = 3
		if o.smoke {
			o.reps = 1
		}
	}
	if o.idle <= 0 {
		o.idle = 10000
		if o.smoke {
			o.idle = 500
		}
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && args[0] == helperFlag {
		return serveEchoHelper(os.Stdin, stdout)
	}
	if len(args) == 3 && args[0] == relayFlag {
		return serveRelay(args[1], args[2], os.Stdin, stdout)
	}
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.wan {
		return runWANMain(ctx, o, stdout, stderr)
	}
	res, err := runBench(ctx, o, stderr)
	if res != nil {
		writeTable(stdout, res)
		if werr := writeJSON(o.out, res); werr != nil {
			fmt.Fprintln(stderr, "bench:", werr)
			return 1
		}
		fmt.Fprintf(stdout, "\nJSON result written to %s\n", o.out)
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	if len(res.Errors) > 0 {
		fmt.Fprintf(stderr, "bench: %d measurement(s) failed; see errors above and in %s\n", len(res.Errors), o.out)
		return 1
	}
	return 0
}

// parseWAN fills the WAN options from their flags' text.
func (o *options) parseWAN(rtts, losses string, blackhole time.Duration) error {
	if rtts == "" {
		rtts = "2,20,80,200"
		if o.smoke {
			rtts = "20"
		}
	}
	if losses == "" {
		losses = "0,0.1,1"
		if o.smoke {
			losses = "0,1"
		}
	}
	for f := range strings.SplitSeq(rtts, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v < 0 {
			return fmt.Errorf("-wan-rtt: %q is not a number of milliseconds", f)
		}
		o.wanRTTs = append(o.wanRTTs, time.Duration(v*float64(time.Millisecond)))
	}
	for f := range strings.SplitSeq(losses, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v < 0 || v >= 100 {
			return fmt.Errorf("-wan-loss: %q is not a percentage below 100", f)
		}
		o.wanLoss = append(o.wanLoss, v/100)
	}
	if o.wanRate <= 0 {
		return errors.New("-wan-rate: must be positive")
	}
	o.wanBlackhole = blackhole
	if blackhole < 0 {
		o.wanBlackhole = 10 * time.Second
		if o.smoke {
			o.wanBlackhole = 2 * time.Second
		}
	}
	if o.out == defaultOut {
		o.out = "bench-wan-result.json"
	}
	return nil
}

// parseSideEnv parses -wan-env. Only PQT_ names are taken: the sides
// inherit nothing else of the harness's that matters, and a typo is caught
// by the sides themselves, which refuse an unknown PQT_ name.
func parseSideEnv(list string) (map[string]string, error) {
	env := map[string]string{}
	if strings.TrimSpace(list) == "" {
		return env, nil
	}
	for kv := range strings.SplitSeq(list, ",") {
		name, value, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || !strings.HasPrefix(name, "PQT_") || len(name) == len("PQT_") {
			return nil, fmt.Errorf("-wan-env: %q is not NAME=VALUE with a PQT_ name", kv)
		}
		env[name] = value
	}
	return env, nil
}

// runWANMain is run for -wan. Without root it says why and, in a smoke
// run, succeeds: the smoke run is part of make test, which may run
// unprivileged.
func runWANMain(ctx context.Context, o options, stdout, stderr io.Writer) int {
	if err := wan.Available(); err != nil {
		fmt.Fprintln(stderr, "bench -wan: skipped:", err)
		if o.smoke {
			return 0
		}
		return 1
	}
	res, err := runWAN(ctx, o, stderr)
	writeWANTable(stdout, res)
	if werr := writeJSONValue(o.out, res); werr != nil {
		fmt.Fprintln(stderr, "bench:", werr)
		return 1
	}
	fmt.Fprintf(stdout, "\nJSON result written to %s\n", o.out)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	if len(res.Errors) > 0 {
		fmt.Fprintf(stderr, "bench: %d measurement(s) failed; see errors above and in %s\n", len(res.Errors), o.out)
		return 1
	}
	return 0
}

// Command bench measures pqtunnel against direct loopback TCP on this
// machine. It builds the binary, runs an origin inside itself (echo, sink and
// source routes), starts listen and dial sides as separate processes for the
// TCP and the QUIC transport, and measures, alternating direct, TCP and QUIC
// in every repetition:
//
//   - bulk throughput of 1 and 4 parallel streams, upload and download;
//   - connection rate and latency of connect + 1-byte echo + close,
//     sequential and with 32 concurrent clients;
//   - tunnel establishment (TLS with ML-DSA-65 + session proof) per key-exchange group,
//     as handshakes per second relative to classical X25519, with the
//     ClientHello/ServerHello sizes (TCP) and first flight (QUIC);
//   - RSS and goroutines of each side per idle proxied connection, and
//     after those connections close;
//   - CPU seconds per GB moved, each side.
//
// Each figure is printed as median and min–max over the repetitions with its
// ratio to direct from the same run; a table goes to stdout and the whole
// result as JSON to -out. Usage, from the module root:
//
//	go run ./integration/bench                 # full run, under five minutes
//	go run ./integration/bench -smoke          # about 20 s: checks that it works
//	go run ./integration/bench -out /tmp/r.json
//	go run ./integration/bench -only bulk,rate # some phases; the others are left out of the table
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
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

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
}

var phaseNames = []string{"memory", "bulk", "rate", "handshake"}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.smoke, "smoke", false, "run a short variant (~20 s) that only checks the harness works")
	fs.StringVar(&o.out, "out", "bench-result.json", "file to write the JSON result to")
	fs.StringVar(&o.bin, "bin", "", "use this pqtunnel binary instead of building ./cmd/pqtunnel")
	fs.IntVar(&o.reps, "reps", 0, "repetitions of each figure (default 3, smoke 1)")
	fs.DurationVar(&o.bulk, "bulk", 0, "measured window of one bulk transfer (default 1.5s, smoke 300ms)")
	fs.DurationVar(&o.rate, "rate", 0, "measured window of one connection-rate run (default 1.5s, smoke 300ms)")
	fs.DurationVar(&o.handshake, "handshake", 0, "how long each key-exchange group is probed per repetition (default 800ms, smoke 200ms)")
	fs.IntVar(&o.idle, "idle", 0, "idle proxied connections for the memory figure (default 10000, smoke 500)")
	fs.BoolVar(&o.verbose, "v", false, "log each measurement to stderr as it is taken")
	only := fs.String("only", "", "run only these comma-separated phases: "+strings.Join(phaseNames, ","))
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if *only != "" {
		for p := range strings.SplitSeq(*only, ",") {
			if !slices.Contains(phaseNames, p) {
				return o, fmt.Errorf("-only: unknown phase %q (phases: %s)", p, strings.Join(phaseNames, ","))
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
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
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

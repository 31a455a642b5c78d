package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// errHelpShown ends a subcommand whose --help printed its usage: exit 0.
var errHelpShown = errors.New("help shown")

// usageError is a command line pqtunnel cannot run: exit 2, as flag's own
// programs do.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }

func (e *usageError) Unwrap() error { return e.err }

// cmdFlags is a subcommand's flag set with the synopsis its --help prints.
type cmdFlags struct {
	*flag.FlagSet
	usage string // what follows "pqtunnel " on the usage line
	what  string // one line on what the subcommand does
}

func newFlags(name, usage, what string) *cmdFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// parse prints errors and usage itself, help to stdout and errors to stderr.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &cmdFlags{FlagSet: fs, usage: usage, what: what}
}

// parse parses args, which must leave exactly nargs positional arguments.
// --help prints the usage on stdout and returns errHelpShown; an unknown
// flag or a wrong count prints it on stderr and returns a usageError.
func (f *cmdFlags) parse(args []string, nargs int, stdout, stderr io.Writer) error {
	err := f.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		f.printUsage(stdout)
		return errHelpShown
	}
	if err == nil && f.NArg() != nargs {
		err = fmt.Errorf("takes %d argument(s), got %d: %q", nargs, f.NArg(), f.Args())
	}
	if err != nil {
		f.printUsage(stderr)
		return &usageError{fmt.Errorf("%s: %w", f.Name(), err)}
	}
	return nil
}

func (f *cmdFlags) printUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: pqtunnel %s\n  %s\n", f.usage, f.what)
	hasFlags := false
	f.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintln(w, "flags:")
		f.SetOutput(w)
		f.PrintDefaults()
		f.SetOutput(io.Discard)
	}
}

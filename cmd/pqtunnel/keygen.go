package main

import (
	"crypto/mldsa"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/pqtunnel/pqtunnel/hybridtls"
)

// keygen writes a new identity with mode 0600 and prints its pin alone on
// stdout, so that PIN=$(pqtunnel keygen -o a.id) works.
func keygen(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "file to write the identity to (required; not overwritten)")
	profile := fs.String("profile", "", "cnsa2: an ML-DSA-87 identity, as PQT_PROFILE=cnsa2 requires (default ML-DSA-65)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("keygen: -o FILE is required")
	}
	params := mldsa.MLDSA65()
	switch *profile {
	case "":
	case profileCNSA2:
		params = mldsa.MLDSA87()
	default:
		return fmt.Errorf("keygen: -profile %q is not cnsa2", *profile)
	}
	id, err := hybridtls.GenerateIdentityFor(params)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	data, err := id.MarshalPEM()
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keygen: %w (an existing identity is never overwritten)", err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close() // the write error is what matters
		return fmt.Errorf("keygen: write %s: %w", *out, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("keygen: write %s: %w", *out, err)
	}
	fmt.Fprintln(stdout, id.Pin)
	return nil
}

// printPin prints the pin of an identity file.
func printPin(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return errors.New("pin: usage: pqtunnel pin FILE")
	}
	id, err := hybridtls.LoadIdentityFile(args[0])
	if err != nil {
		return fmt.Errorf("pin: %w", err)
	}
	fmt.Fprintln(stdout, id.Pin)
	return nil
}

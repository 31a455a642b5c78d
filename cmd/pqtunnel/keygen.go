package main

import (
	"crypto/mldsa"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/internal/config"
)

// keygen writes a new identity with mode 0600 and prints its pin alone on
// stdout, so that PIN=$(pqtunnel keygen -o a.id) works. Missing parent
// directories are created with mode 0700, as befits a directory of keys.
func keygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keygen", "keygen [--profile cnsa2] -o FILE", "write a new hybrid identity (ML-DSA-65 + Ed25519; ML-DSA-87 with --profile cnsa2) to FILE with mode 0600 and print its pin")
	out := fs.String("o", "", "file to write the identity to (required; never overwritten; missing directories are created with mode 0700)")
	profile := fs.String("profile", "", "cnsa2: an ML-DSA-87 identity, as "+config.Name("Profile")+"=cnsa2 requires (default ML-DSA-65)")
	if err := fs.parse(args, 0, stdout, stderr); err != nil {
		return err
	}
	if *out == "" {
		fs.printUsage(stderr)
		return &usageError{errors.New("keygen: -o FILE is required")}
	}
	params := mldsa.MLDSA65()
	switch *profile {
	case "":
	case config.ProfileCNSA2:
		params = mldsa.MLDSA87()
	default:
		fs.printUsage(stderr)
		return &usageError{fmt.Errorf("keygen: -profile %q is not cnsa2", *profile)}
	}
	id, err := pinned.GenerateIdentityFor(params)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	data, err := id.MarshalPEM()
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o700); err != nil {
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
func printPin(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pin", "pin FILE", "print the pin of the identity in FILE, for the peer's "+config.Name("Peers"))
	if err := fs.parse(args, 1, stdout, stderr); err != nil {
		return err
	}
	id, err := pinned.LoadIdentityFile(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("pin: %w", err)
	}
	fmt.Fprintln(stdout, id.Pin)
	return nil
}

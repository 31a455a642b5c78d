package main

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/pqtunnel/pqtunnel/internal/ca"
	"github.com/pqtunnel/pqtunnel/internal/config"
)

// caCommand runs 'pqtunnel ca init|issue|sign': a small ML-DSA CA for CA
// mode, for fleets whose own CA cannot issue ML-DSA certificates yet.
func caCommand(args []string, stdout, stderr io.Writer) error {
	const usage = "usage: pqtunnel ca init|issue|sign ...\n  a small ML-DSA certificate authority for CA mode ('pqtunnel ca SUBCOMMAND --help' for its flags)\n"
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &usageError{errors.New("ca: a subcommand is required: init, issue or sign")}
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return errHelpShown
	}
	var err error
	switch sub {
	case "init":
		err = caInit(args, stdout, stderr)
	case "issue":
		err = caIssue(args, stdout, stderr)
	case "sign":
		err = caSign(args, stdout, stderr)
	default:
		fmt.Fprint(stderr, usage)
		err = &usageError{fmt.Errorf("ca: unknown subcommand %q (want init, issue or sign)", sub)}
	}
	// Usage errors and help already name the subcommand; others get it here.
	if ue := (*usageError)(nil); err == nil || errors.Is(err, errHelpShown) || errors.As(err, &ue) {
		return err
	}
	return fmt.Errorf("ca %s: %w", sub, err)
}

func caInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca init", "ca init -o DIR [-alg ML-DSA-65|ML-DSA-87] [-cn NAME] [-days N]", "create a small ML-DSA CA for CA mode in DIR")
	out := fs.String("o", "", "directory to create the CA in (required; an existing CA is never overwritten)")
	alg := fs.String("alg", "ML-DSA-65", "root key: ML-DSA-65 or ML-DSA-87 (CNSA 2.0); leaves get the same")
	cn := fs.String("cn", "pqtunnel CA", "the root certificate's common name")
	days := fs.Int("days", 3650, "validity of the root certificate in days")
	if err := fs.parse(args, 0, stdout, stderr); err != nil {
		return err
	}
	if *out == "" {
		fs.printUsage(stderr)
		return &usageError{errors.New("ca init: -o DIR is required")}
	}
	params, err := ca.ParseParameters(*alg)
	if err != nil {
		return fmt.Errorf("-alg: %w", err)
	}
	if params.String() == "ML-DSA-44" {
		return errors.New("-alg: a root key is ML-DSA-65 or ML-DSA-87, not the smaller ML-DSA-44")
	}
	c, err := ca.Init(*out, *cn, params, *days)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s CA %q valid until %s\n  key  %s (keep it offline, mode 0600)\n  cert %s (give it to both sides as %s)\n",
		params, c.Cert.Subject.CommonName, c.Cert.NotAfter.Format("2006-01-02"), filepath.Join(*out, ca.KeyFile), filepath.Join(*out, ca.CertFile), config.Name("CA"))
	return nil
}

// nameFlags collects repeated --name dns:NAME / cn:NAME and --uri URI flags.
type nameFlags struct{ names ca.Names }

func (n *nameFlags) addName(s string) error {
	kind, v, ok := strings.Cut(s, ":")
	if !ok || v == "" {
		return fmt.Errorf("%q: want dns:NAME or cn:NAME", s)
	}
	switch kind {
	case "dns":
		n.names.DNS = append(n.names.DNS, v)
	case "cn":
		if n.names.CommonName != "" {
			return errors.New("cn: given twice")
		}
		n.names.CommonName = v
	case "uri":
		return n.addURI(v)
	default:
		return fmt.Errorf("%q: want dns:NAME or cn:NAME", s)
	}
	return nil
}

func (n *nameFlags) addURI(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return fmt.Errorf("%q is not an absolute URI (e.g. spiffe://cluster.local/ns/app/sa/web)", s)
	}
	n.names.URIs = append(n.names.URIs, u)
	return nil
}

func caIssue(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca issue", "ca issue --ca DIR --name dns:NAME [--uri URI] [--days N] -o PREFIX", "issue an ML-DSA certificate: PREFIX.key (0600) and PREFIX.crt")
	dir := fs.String("ca", "", "the CA directory (from 'pqtunnel ca init')")
	var names nameFlags
	fs.Func("name", "a name of the certificate: dns:NAME, uri:URI or cn:NAME (repeatable)", names.addName)
	fs.Func("uri", "a URI SAN, e.g. spiffe://cluster.local/ns/app/sa/web (repeatable)", names.addURI)
	days := fs.Int("days", 90, "validity in days (never past the CA's own)")
	out := fs.String("o", "", "write PREFIX.key (mode 0600) and PREFIX.crt (required; never overwritten)")
	if err := fs.parse(args, 0, stdout, stderr); err != nil {
		return err
	}
	if *dir == "" || *out == "" {
		fs.printUsage(stderr)
		return &usageError{errors.New("ca issue: --ca DIR and -o PREFIX are required")}
	}
	c, err := ca.Load(*dir)
	if err != nil {
		return err
	}
	key, cert, err := c.Issue(names.names, *days)
	if err != nil {
		return err
	}
	keyPath, certPath, err := ca.WriteLeaf(*out, key, cert)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s certificate for %s valid until %s\n  key  %s (%s, mode 0600)\n  cert %s (%s)\n",
		key.PublicKey().Parameters(), certNames(names.names), cert.NotAfter.Format("2006-01-02"), keyPath, config.Name("Key"), certPath, config.Name("Cert"))
	return nil
}

func caSign(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca sign", "ca sign --ca DIR [--days N] [-o FILE] CSR", "sign a certificate request for an ML-DSA key made elsewhere")
	dir := fs.String("ca", "", "the CA directory (from 'pqtunnel ca init')")
	days := fs.Int("days", 90, "validity in days (never past the CA's own)")
	out := fs.String("o", "", "file to write the certificate to (default stdout; never overwritten)")
	if err := fs.parse(args, 1, stdout, stderr); err != nil {
		return err
	}
	if *dir == "" {
		fs.printUsage(stderr)
		return &usageError{errors.New("ca sign: --ca DIR is required")}
	}
	csr, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	c, err := ca.Load(*dir)
	if err != nil {
		return err
	}
	cert, err := c.SignRequest(csr, *days)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = stdout.Write(ca.CertPEM(cert))
		return err
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("%w (an existing file is never overwritten)", err)
	}
	if _, err := f.Write(ca.CertPEM(cert)); err != nil {
		_ = f.Close() // the write error is what matters
		return err
	}
	return f.Close()
}

func certNames(n ca.Names) string {
	var s []string
	for _, d := range n.DNS {
		s = append(s, "dns:"+d)
	}
	for _, u := range n.URIs {
		s = append(s, "uri:"+u.String())
	}
	if n.CommonName != "" {
		s = append(s, "cn:"+n.CommonName)
	}
	return strings.Join(s, ",")
}

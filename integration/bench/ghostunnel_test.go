package main

import (
	"io"
	"slices"
	"strings"
	"testing"
)

func TestParseFlagsGhostunnel(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"absent", []string{"-only", "tls"}, ""},
		{"path", []string{"-only", "tls", "-ghostunnel", "/opt/ghostunnel"}, "/opt/ghostunnel"},
		{"equals", []string{"-ghostunnel=/tmp/g u"}, "/tmp/g u"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if o.ghostunnel != tc.want {
				t.Fatalf("ghostunnel = %q, want %q", o.ghostunnel, tc.want)
			}
		})
	}
	if _, err := parseFlags([]string{"-ghostunnel"}, io.Discard); err == nil {
		t.Fatal("-ghostunnel without a value was accepted")
	}
}

func TestGhostunnelArgs(t *testing.T) {
	args := ghostunnelArgs("127.0.0.1:1", "127.0.0.1:2", "/c.pem", "/k.pem")
	if args[0] != "server" {
		t.Fatalf("mode %q, want server", args[0])
	}
	value := func(flag string) string {
		i := slices.Index(args, flag)
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("%s missing from %q", flag, args)
		}
		return args[i+1]
	}
	for flag, want := range map[string]string{"--listen": "127.0.0.1:1", "--target": "127.0.0.1:2", "--cert": "/c.pem", "--key": "/k.pem"} {
		if got := value(flag); got != want {
			t.Errorf("%s %q, want %q", flag, got, want)
		}
	}
	if !slices.Contains(args, "--disable-authentication") {
		t.Errorf("clients would need a certificate: %q", args)
	}
}

func TestTerminatorRows(t *testing.T) {
	c := newCollector()
	for rep, v := range []float64{100, 200, 400} {
		c.add("upload_1_stream_tls_terminated", "MB/s", modeDirect, rep, v)
		c.add("upload_1_stream_tls_terminated", "MB/s", modeTLS, rep, v/2)
		c.add("upload_1_stream_tls_terminated", "MB/s", modeGhostunnel, rep, v/float64(4+rep))
	}
	r := &Result{Bulk: c.figures()}
	rows := terminatorRows(r)
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1: %q", len(rows), rows)
	}
	if want := [3]string{"upload 1 stream tls terminated (MB/s)", "0.50× (0.50–0.50)", "0.20× (0.17–0.25)"}; rows[0] != want {
		t.Fatalf("row %q, want %q", rows[0], want)
	}
	var out strings.Builder
	writeTable(&out, r)
	if !strings.Contains(out.String(), "0.20× (0.17–0.25)") {
		t.Fatalf("table lacks ghostunnel's ratio:\n%s", out.String())
	}

	// Without ghostunnel figures the section is left out.
	c = newCollector()
	c.add("upload_1_stream_tls_terminated", "MB/s", modeDirect, 0, 100)
	c.add("upload_1_stream_tls_terminated", "MB/s", modeTLS, 0, 50)
	if rows := terminatorRows(&Result{Bulk: c.figures()}); len(rows) != 0 {
		t.Fatalf("rows without ghostunnel: %q", rows)
	}
}

package main

import (
	"errors"
	"testing"
)

func TestUDPBufferFixNamesTheSysctl(t *testing.T) {
	proc := func(r, w string) func(string) ([]byte, error) {
		return func(path string) ([]byte, error) {
			switch path {
			case "/proc/sys/net/core/rmem_max":
				return []byte(r + "\n"), nil
			case "/proc/sys/net/core/wmem_max":
				return []byte(w + "\n"), nil
			}
			return nil, errors.New("no such file")
		}
	}
	cases := []struct {
		name, r, w, want string
	}{
		{"both low", "212992", "212992", "sysctl -w net.core.rmem_max=7340032 net.core.wmem_max=7340032"},
		{"receive low", "212992", "8000000", "sysctl -w net.core.rmem_max=7340032"},
		{"enough", "7340032", "7340032", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := udpBufferFix(proc(c.r, c.w)); got != c.want {
				t.Errorf("udpBufferFix = %q, want %q", got, c.want)
			}
		})
	}
	if got := udpBufferFix(func(string) ([]byte, error) { return nil, errors.New("no /proc") }); got != "" {
		t.Errorf("without /proc: %q, want nothing", got)
	}
}

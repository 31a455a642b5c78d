package quic

import (
	"errors"
	"testing"
)

func TestProbeRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		kind byte
		seq  uint64
	}{{probePing, 0}, {probePong, 1}, {probePing, 1<<64 - 1}} {
		b := appendProbe(nil, tc.kind, tc.seq)
		if len(b) != probeSize {
			t.Errorf("probe is %d bytes, want %d", len(b), probeSize)
		}
		kind, seq, err := parseProbe(b)
		if err != nil || kind != tc.kind || seq != tc.seq {
			t.Errorf("parseProbe(appendProbe(%d, %d)) = %d, %d, %v", tc.kind, tc.seq, kind, seq, err)
		}
	}
	for _, b := range [][]byte{nil, {probePing}, {3, 0, 0, 0, 0, 0, 0, 0, 0}, make([]byte, probeHeader-1)} {
		if _, _, err := parseProbe(b); !errors.Is(err, errNotProbe) {
			t.Errorf("parseProbe(%x) = %v, want errNotProbe", b, err)
		}
	}
}

// FuzzParseProbe checks that any datagram parses without panicking and
// that every probe parsed re-encodes to the same kind and sequence number.
func FuzzParseProbe(f *testing.F) {
	f.Add(appendProbe(nil, probePing, 7))
	f.Add(appendProbe(nil, probePong, 1<<40))
	f.Add([]byte{probePing, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, seq, err := parseProbe(b)
		if err != nil {
			return
		}
		again := appendProbe(nil, kind, seq)
		k2, s2, err := parseProbe(again)
		if err != nil || k2 != kind || s2 != seq {
			t.Fatalf("round trip of %d, %d gave %d, %d, %v", kind, seq, k2, s2, err)
		}
		if string(again[:probeHeader]) != string(b[:probeHeader]) {
			t.Fatalf("re-encoded header %x differs from %x", again[:probeHeader], b[:probeHeader])
		}
	})
}

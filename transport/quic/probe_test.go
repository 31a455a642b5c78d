package quic

import (
	"errors"
	"testing"
)

func TestProbeRoundTrip(t *testing.T) {
	for _, p := range []probe{
		{kind: probePing},
		{kind: probePong, seq: 1, sent: 12, lost: 3},
		{kind: probePing, seq: 1<<64 - 1, sent: 1<<64 - 1, lost: 1 << 40},
	} {
		b := appendProbe(nil, p)
		if len(b) != probeSize {
			t.Errorf("probe is %d bytes, want %d", len(b), probeSize)
		}
		got, err := parseProbe(b)
		if err != nil || got != p {
			t.Errorf("parseProbe(appendProbe(%+v)) = %+v, %v", p, got, err)
		}
	}
	for _, b := range [][]byte{nil, {probePing}, {3, 0, 0, 0, 0, 0, 0, 0, 0}, make([]byte, probeHeader-1)} {
		if _, err := parseProbe(b); !errors.Is(err, errNotProbe) {
			t.Errorf("parseProbe(%x) = %v, want errNotProbe", b, err)
		}
	}
	// An older peer's probe, the header and zeros, carries no counts; one
	// cut short after the header parses without them.
	old := append([]byte{probePong, 0, 0, 0, 0, 0, 0, 0, 7}, make([]byte, probeSize-probeHeader)...)
	for _, b := range [][]byte{old, old[:probeHeader+3]} {
		if p, err := parseProbe(b); err != nil || p != (probe{kind: probePong, seq: 7}) {
			t.Errorf("parseProbe(%x) = %+v, %v, want a pong 7 without counts", b, p, err)
		}
	}
}

// FuzzParseProbe checks that any datagram parses without panicking and
// that every probe parsed re-encodes to the same fields and, as far as the
// datagram had them, the same bytes.
func FuzzParseProbe(f *testing.F) {
	f.Add(appendProbe(nil, probe{kind: probePing, seq: 7}))
	f.Add(appendProbe(nil, probe{kind: probePong, seq: 1 << 40, sent: 1000, lost: 9}))
	f.Add(appendProbe(nil, probe{kind: probePing, seq: burstSeq | 3<<32 | 5, sent: 1})[:probeCounts])
	f.Add([]byte{probePing, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseProbe(b)
		if err != nil {
			return
		}
		again := appendProbe(nil, p)
		p2, err := parseProbe(again)
		if err != nil || p2 != p {
			t.Fatalf("round trip of %+v gave %+v, %v", p, p2, err)
		}
		n := probeHeader
		if len(b) >= probeCounts {
			n = probeCounts
		}
		if string(again[:n]) != string(b[:n]) {
			t.Fatalf("re-encoded %x differs from %x", again[:n], b[:n])
		}
	})
}

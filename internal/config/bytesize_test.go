package config

import "testing"

func TestByteSizeParses(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ByteSize
	}{
		{"65536", 65536}, {"512KiB", 512 << 10}, {"64MiB", 64 << 20}, {"1GiB", 1 << 30}, {"100B", 100}, {" 2MiB ", 2 << 20},
	} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(tc.in)); err != nil || b != tc.want {
			t.Errorf("%q: got %d, %v; want %d", tc.in, b, err, tc.want)
		}
	}
	for _, bad := range []string{"", "-1", "+5", "1.5MiB", "64MB", "64mib", "2GiB", "MiB", "9999999999", "0x10"} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("%q parsed as %d, want an error", bad, b)
		}
	}
}

func FuzzByteSize(f *testing.F) {
	for _, s := range []string{"0", "65536", "512KiB", "64MiB", "1GiB", "1B", "-1", "1.5MiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b ByteSize
		if err := b.UnmarshalText([]byte(s)); err != nil {
			return
		}
		if b < 0 || b > maxByteSize {
			t.Fatalf("%q parsed to %d, outside 0..1GiB", s, b)
		}
		var again ByteSize
		if err := again.UnmarshalText([]byte(b.String())); err != nil || again != b {
			t.Fatalf("%q → %d → %q → %d, %v: no round trip", s, b, b.String(), again, err)
		}
	})
}

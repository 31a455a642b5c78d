package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ByteSize is a size in bytes written as a whole number with an optional
// binary unit: "65536", "512KiB", "64MiB", "1GiB".
type ByteSize int

var byteUnits = []struct {
	suffix string
	shift  uint
}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}}

// maxByteSize keeps every size well inside an int on 32-bit platforms too.
const maxByteSize = 1 << 30

var errByteSize = errors.New(`want a whole number of bytes with an optional unit KiB, MiB or GiB, e.g. "64MiB"`)

// UnmarshalText parses a ByteSize, refusing negative, fractional and
// out-of-range values and unknown units.
func (b *ByteSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	shift := uint(0)
	for _, u := range byteUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, shift = num, u.shift
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 31)
	if err != nil || s == "" || s[0] == '+' {
		return fmt.Errorf("%q: %w", text, errByteSize)
	}
	if n > maxByteSize>>shift {
		return fmt.Errorf("%q: at most 1GiB", text)
	}
	*b = ByteSize(n << shift)
	return nil
}

// String writes b in the largest unit that divides it.
func (b ByteSize) String() string {
	for _, u := range byteUnits {
		if u.shift > 0 && b != 0 && int(b)%(1<<u.shift) == 0 {
			return strconv.Itoa(int(b)>>u.shift) + u.suffix
		}
	}
	return strconv.Itoa(int(b))
}

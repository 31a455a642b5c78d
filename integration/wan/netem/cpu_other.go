//go:build !linux

package netem

import "time"

// pin does nothing where threads' CPU time cannot be read.
func (l *Link) pin() func() { return func() {} }

// CPU is zero where threads' CPU time cannot be read.
func (l *Link) CPU() time.Duration { return 0 }

//go:build !linux

package main

import (
	"context"
	"errors"
	"io"
)

// runWAN needs the WAN test bed, which needs Linux; runWANMain asks
// wan.Available first and never gets here.
func runWAN(context.Context, options, io.Writer) (*WANResult, error) {
	return nil, errors.New("-wan needs Linux")
}

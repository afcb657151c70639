// Package tpmsim opens the in-process TPM 2.0 reference simulator for
// tests and demos. It needs cgo, so only builds that want the simulator
// import it; the release binary can be built with CGO_ENABLED=0 without it.
package tpmsim

import (
	"fmt"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
)

// Open starts a freshly manufactured simulator (new seeds, so a new
// "machine" every time). Only one simulator can be open in a process at a
// time: Open blocks until the previous one is closed.
func Open() (transport.TPMCloser, error) {
	sim, err := simulator.Get()
	if err != nil {
		return nil, fmt.Errorf("tpmsim: start simulator: %w", err)
	}
	return transport.FromReadWriteCloser(sim), nil
}

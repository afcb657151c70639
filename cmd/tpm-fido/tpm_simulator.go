//go:build cgo

package main

import (
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
)

// With cgo the binary also offers `--tpm simulator`: the in-process TPM
// reference simulator, for demos and tests. A simulator is a new TPM on
// every start, so its credentials do not outlive the process.
func init() {
	openTPM = func(spec string) (transport.TPMCloser, error) {
		if spec == "simulator" {
			return tpmsim.Open()
		}
		return tpmstore.OpenTPM(spec)
	}
}

//go:build !cgo

package main

import (
	"errors"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// Without cgo (the release build) there is no TPM simulator.
func init() {
	openTPM = func(spec string) (transport.TPMCloser, error) {
		if spec == "simulator" {
			return nil, errors.New("this tpm-fido was built without cgo and has no TPM simulator; use a TPM device or swtpm:SOCKET")
		}
		return tpmstore.OpenTPM(spec)
	}
}

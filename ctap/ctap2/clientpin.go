package ctap2

import (
	"context"

	"github.com/tpm-fido/tpm-fido/ctap"
)

// clientPIN handles authenticatorClientPIN (CTAP 2.1 §6.5). raw is the
// CBOR parameter map; the result is the CBOR response map.
func (a *Authenticator) clientPIN(ctx context.Context, raw []byte) ([]byte, error) {
	return nil, ctap.StatusInvalidCommand
}

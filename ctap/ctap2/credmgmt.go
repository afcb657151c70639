package ctap2

import (
	"context"

	"github.com/tpm-fido/tpm-fido/ctap"
)

// credentialManagement handles authenticatorCredentialManagement
// (CTAP 2.1 §6.8), also reached as the preview command 0x41.
func (a *Authenticator) credentialManagement(ctx context.Context, raw []byte) ([]byte, error) {
	return nil, ctap.StatusInvalidCommand
}

// credMgmtState is what enumerateRPsGetNextRP and
// enumerateCredentialsGetNextCredential continue from.
type credMgmtState struct{}

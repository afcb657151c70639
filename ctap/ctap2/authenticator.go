// Package ctap2 implements the CTAP 2.1 authenticator API (CTAP 2.1 §6):
// CBOR requests in, canonical CBOR responses out, keys from a Store,
// user presence from a presence.Prompter.
package ctap2

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/presence"
)

// Command bytes (CTAP 2.1 §6).
const (
	cmdMakeCredential        = 0x01
	cmdGetAssertion          = 0x02
	cmdGetInfo               = 0x04
	cmdClientPIN             = 0x06
	cmdReset                 = 0x07
	cmdGetNextAssertion      = 0x08
	cmdCredentialManagement  = 0x0A
	cmdSelection             = 0x0B
	cmdCredentialMgmtPreview = 0x41
)

// Config configures an Authenticator.
type Config struct {
	Store    Store
	Presence presence.Prompter
	Logger   *slog.Logger
	Rand     io.Reader        // crypto/rand.Reader when nil
	Now      func() time.Time // time.Now when nil
}

// Authenticator serves CTAP2 requests. One request runs at a time.
type Authenticator struct {
	cfg     Config
	log     *slog.Logger
	pin     *pinuv.State
	cm      credMgmtState // enumeration state of credentialManagement (credmgmt.go)
	mu      sync.Mutex
	started time.Time
}

// HandleRequest implements ctap.RequestHandler: req[0] is the command
// byte, the rest its CBOR parameters. The response is a status byte
// followed, on success, by the CBOR response.
func (a *Authenticator) HandleRequest(ctx context.Context, req []byte) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(req) == 0 {
		return []byte{byte(ctap.StatusInvalidLength)}, nil
	}
	if req[0] != cmdCredentialManagement && req[0] != cmdCredentialMgmtPreview {
		a.cm = credMgmtState{} // any other command ends an enumeration (§6.8)
	}
	var (
		resp []byte
		err  error
	)
	switch req[0] {
	case cmdClientPIN:
		resp, err = a.clientPIN(ctx, req[1:])
	case cmdCredentialManagement, cmdCredentialMgmtPreview:
		resp, err = a.credentialManagement(ctx, req[1:])
	default:
		err = ctap.StatusInvalidCommand
	}
	if err != nil {
		st := ctap.StatusOf(err)
		if st == ctap.StatusOther {
			a.log.Error("ctap2 request failed", "cmd", req[0], "err", err)
		}
		return []byte{byte(st)}, nil
	}
	return append([]byte{byte(ctap.StatusOK)}, resp...), nil
}

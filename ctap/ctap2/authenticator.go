// Package ctap2 implements the CTAP 2.1 authenticator API (CTAP 2.1 §6):
// CBOR requests in, canonical CBOR responses out, keys from a Store,
// user presence from a presence.Prompter.
package ctap2

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
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
	// FirmwareVersion is reported by getInfo (0x0E); 0 means
	// DefaultFirmwareVersion.
	FirmwareVersion uint64
}

// Response size limits libfido2 enforces (see DESIGN.md).
const (
	maxMakeCredentialResponse = 4096
	maxResponse               = 2048
)

// DefaultFirmwareVersion is the firmwareVersion getInfo reports unless
// Config sets one.
const DefaultFirmwareVersion = 1

// resetWindow is how long after start authenticatorReset is allowed, as
// a hardware key allows it only shortly after power-up (CTAP 2.1 §6.6).
const resetWindow = 10 * time.Second

// New makes an Authenticator. Store and Presence are required; Rand, Now
// and Logger default to crypto/rand, time.Now and a discarding logger.
// The reset window starts now.
func New(cfg Config) (*Authenticator, error) {
	if cfg.Store == nil {
		return nil, errors.New("ctap2: Config.Store is required")
	}
	if cfg.Presence == nil {
		return nil, errors.New("ctap2: Config.Presence is required")
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FirmwareVersion == 0 {
		cfg.FirmwareVersion = DefaultFirmwareVersion
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	pin, err := pinuv.NewState(cfg.Rand, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("ctap2: PIN/UV state: %w", err)
	}
	return &Authenticator{
		cfg:     cfg,
		log:     cfg.Logger,
		pin:     pin,
		started: cfg.Now(),
	}, nil
}

// Authenticator serves CTAP2 requests. One request runs at a time.
type Authenticator struct {
	cfg     Config
	log     *slog.Logger
	pin     *pinuv.State
	cm      credMgmtState  // enumeration state of credentialManagement (credmgmt.go)
	next    *nextAssertion // getNextAssertion state (getassertion.go)
	owner   uint32         // CTAPHID channel that cm and next belong to
	mu      sync.Mutex
	started time.Time
}

var _ ctap.Handler = (*Authenticator)(nil)

// Handle implements ctap.Handler for CTAPHID_CBOR: the payload's first
// byte is the command byte, the rest its CBOR parameters. The response is
// a status byte followed, on success, by the CBOR response; the error is
// always nil.
//
// State that spans requests (getNextAssertion, credentialManagement's
// enumerations) belongs to the channel that started it: a request from
// any other channel ends it first, so a continuation from another
// channel is CTAP2_ERR_NOT_ALLOWED. Any other command from the same
// channel ends it too (§6.3, §6.8).
func (a *Authenticator) Handle(ctx context.Context, r ctap.Request) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	req := r.Payload
	if r.CID != a.owner {
		a.cm = credMgmtState{}
		a.next = nil
		a.owner = r.CID
	}
	if len(req) == 0 {
		return []byte{byte(ctap.StatusInvalidLength)}, nil
	}
	if req[0] != cmdCredentialManagement && req[0] != cmdCredentialMgmtPreview {
		a.cm = credMgmtState{} // any other command ends an enumeration (§6.8)
	}
	if req[0] != cmdGetNextAssertion {
		a.next = nil // any other command ends a getNextAssertion walk (§6.3)
	}
	var (
		resp  []byte
		err   error
		limit = maxResponse
	)
	switch req[0] {
	case cmdMakeCredential:
		limit = maxMakeCredentialResponse
		resp, err = a.makeCredential(ctx, req[1:])
	case cmdGetAssertion:
		resp, err = a.getAssertion(ctx, req[1:])
	case cmdGetNextAssertion:
		resp, err = a.getNextAssertion(req[1:])
	case cmdGetInfo:
		resp, err = a.getInfo(req[1:])
	case cmdReset:
		resp, err = a.reset(ctx, req[1:])
	case cmdSelection:
		resp, err = a.selection(ctx, req[1:])
	case cmdClientPIN:
		resp, err = a.clientPIN(req[1:])
	case cmdCredentialManagement, cmdCredentialMgmtPreview:
		resp, err = a.credentialManagement(req[1:], req[0] == cmdCredentialMgmtPreview)
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
	if len(resp)+1 > limit {
		a.log.Error("ctap2 response too large", "cmd", req[0], "len", len(resp)+1, "limit", limit)
		return []byte{byte(ctap.StatusOther)}, nil
	}
	return append([]byte{byte(ctap.StatusOK)}, resp...), nil
}

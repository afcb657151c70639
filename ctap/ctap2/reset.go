package ctap2

import (
	"context"
	"fmt"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/presence"
)

// reset handles authenticatorReset (CTAP 2.1 §6.6): allowed only within
// resetWindow of start, after the user confirms; it deletes every
// credential and the PIN and regenerates the PIN/UV state.
func (a *Authenticator) reset(ctx context.Context, raw []byte) ([]byte, error) {
	if len(raw) != 0 {
		return nil, ctap.StatusInvalidLength
	}
	if a.cfg.Now().Sub(a.started) > resetWindow {
		return nil, ctap.StatusNotAllowed
	}
	if err := a.confirmPresence(ctx, presence.Request{Op: presence.OpReset}); err != nil {
		return nil, err
	}
	if err := a.cfg.Store.Reset(); err != nil {
		return nil, fmt.Errorf("ctap2: reset: store: %w", err)
	}
	if err := a.pin.Regenerate(); err != nil {
		return nil, fmt.Errorf("ctap2: reset: PIN/UV state: %w", err)
	}
	a.next = nil
	a.log.Info("authenticator reset: all credentials and the PIN deleted")
	return nil, nil
}

// selection handles authenticatorSelection (CTAP 2.1 §6.9): the user
// touches the key the platform should use.
func (a *Authenticator) selection(ctx context.Context, raw []byte) ([]byte, error) {
	if len(raw) != 0 {
		return nil, ctap.StatusInvalidLength
	}
	if err := a.confirmPresence(ctx, presence.Request{Op: presence.OpSelect}); err != nil {
		return nil, err
	}
	return nil, nil
}

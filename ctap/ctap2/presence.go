package ctap2

import (
	"context"
	"errors"
	"fmt"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/presence"
)

// confirmPresence asks the user to approve req, telling the transport to
// send KEEPALIVE(UPNEEDED) meanwhile. The result is nil or a CTAP status:
// OPERATION_DENIED (said no, or no prompt backend), KEEPALIVE_CANCEL
// (CTAPHID_CANCEL or shutdown), USER_ACTION_TIMEOUT (nobody answered).
func (a *Authenticator) confirmPresence(ctx context.Context, req presence.Request) error {
	ctap.SetKeepalive(ctx, ctap.KeepaliveUPNeeded)
	err := a.cfg.Presence.Confirm(ctx, req)
	ctap.SetKeepalive(ctx, ctap.KeepaliveProcessing)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		return ctap.StatusKeepaliveCancel
	case errors.Is(err, presence.ErrTimeout) || errors.Is(err, context.DeadlineExceeded):
		return ctap.StatusUserActionTimeout
	case errors.Is(err, presence.ErrDenied):
		return ctap.StatusOperationDenied
	case errors.Is(err, presence.ErrUnavailable):
		a.log.Warn("no user-presence prompt available; denying", "op", req.Message(), "err", err)
		return ctap.StatusOperationDenied
	}
	return fmt.Errorf("ctap2: presence prompt: %w", err)
}

package main

import (
	"context"
	"log/slog"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
)

// newHandler builds the authenticator behind the CTAPHID server and a
// function that releases it. For now it answers as a device without
// CTAP2 or U2F support: CBOR with CTAP1_ERR_INVALID_COMMAND, MSG with
// SW_INS_NOT_SUPPORTED.
func newHandler(ctx context.Context, cfg serveConfig, log *slog.Logger) (ctaphid.Handler, func() error, error) {
	return &ctap.Mux{}, func() error { return nil }, nil
}

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/u2f"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// newHandler builds the authenticator behind the CTAPHID server: the TPM
// connection, the key store, the presence prompter, and the CTAP2 and U2F
// handlers routed by a ctap.Mux. The returned function releases the store
// and the TPM in that order; checked waits for the store's check of the
// state (which runs on after the start) and returns, explained, the
// damage it found.
func newHandler(cfg serveConfig, log *slog.Logger) (h ctaphid.Handler, closeAll func() error, checked func() error, err error) {
	prompter, err := presence.New(cfg.Presence, presence.Options{
		Timeout:          cfg.PromptTimeout,
		InsecureTestMode: cfg.InsecureTestMode,
		Logger:           log,
		PinentryProgram:  cfg.Pinentry,
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("presence backend %q: %w", cfg.Presence, err)
	}

	// Damaged or unreadable state is reported by Open before any TPM
	// command (it examines the file before bbolt maps it), so the state
	// is checked once per start, not twice. Open checks at once what it
	// reads itself; the walk over every page in use runs on in the
	// background (a start that does not grow with the number of
	// credentials), every state operation waits for it, and serve stops
	// when it finds damage.
	sf := storeFlags{tpm: cfg.TPM, stateDir: cfg.StateDir}
	tpm, err := openTPM(cfg.TPM)
	if err != nil {
		return nil, nil, nil, err
	}
	store, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: cfg.StateDir, Logger: log, MaxResidents: cfg.MaxResidents, CheckInBackground: true})
	if err != nil {
		tpm.Close()
		if errors.Is(err, tpmstore.ErrForeignTPM) || errors.Is(err, tpmstore.ErrCorruptState) || errors.Is(err, tpmstore.ErrStateUnreadable) {
			return nil, nil, nil, sf.explain(err)
		}
		if errors.Is(err, tpmstore.ErrStaleState) {
			return nil, nil, nil, fmt.Errorf("%w; the files were left untouched: put back the newer %s, or run `tpm-fido reset --state-dir %s` with the daemon stopped", err, tpmstore.StatePath(cfg.StateDir), cfg.StateDir)
		}
		return nil, nil, nil, fmt.Errorf("opening the state in %s: %w", cfg.StateDir, err)
	}
	closeAll = func() error {
		return errors.Join(store.Close(), tpm.Close())
	}
	checked = func() error {
		if err := store.Checked(); err != nil {
			return sf.explain(err)
		}
		return nil
	}

	auth, err := ctap2.New(ctap2.Config{Store: store, Presence: prompter, Logger: log})
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	u, err := u2f.New(u2f.Config{Store: store, Presence: prompter, Logger: log, PromptTimeout: cfg.PromptTimeout})
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	return &ctap.Mux{CBOR: auth, MSG: u}, closeAll, checked, nil
}

// checkTestModes refuses the settings that are only for tests unless
// --insecure-test-mode says so: a fixed presence answer, the in-process
// TPM simulator (whose keys live in this process's memory), and the UDP
// transport (any local user can send it reports: it has no peer to
// authenticate).
func (cfg serveConfig) checkTestModes() error {
	if cfg.InsecureTestMode {
		return nil
	}
	if cfg.Transport == "udp" || strings.HasPrefix(cfg.Transport, "udp:") {
		return fmt.Errorf("--transport %s accepts reports from any local user (UDP has no peer to authenticate); it needs --insecure-test-mode", cfg.Transport)
	}
	if cfg.TPM == "simulator" {
		return fmt.Errorf("--tpm simulator keeps every key in this process's memory, not in a TPM; it needs --insecure-test-mode")
	}
	if isFixedPresence(cfg.Presence) {
		return fmt.Errorf("--presence %s answers every prompt without asking anyone; it needs --insecure-test-mode", cfg.Presence)
	}
	return nil
}

// isFixedPresence reports whether name selects a fixed test answer
// (always-allow, always-deny, allow-after:D).
func isFixedPresence(name string) bool {
	return strings.HasPrefix(name, "always-") || strings.HasPrefix(name, presence.BackendAllowAfter)
}

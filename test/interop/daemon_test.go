//go:build cgo && !nolibfido2

package interop

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	tpmtransport "github.com/google/go-tpm/tpm2/transport"
	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/u2f"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
	"github.com/tpm-fido/tpm-fido/transport"
)

// daemon is the authenticator in-process: tpmstore on the TPM simulator,
// ctap2 and u2f behind ctap.Mux, served by the CTAPHID server on the
// daemon's unix: transport (SOCK_SEQPACKET, one packet per report).
type daemon struct {
	path  string
	store *tpmstore.Store
}

func requireLibfido2(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("pkg-config"); err != nil {
		t.Skip("pkg-config not installed")
	}
	if err := exec.Command("pkg-config", "--exists", "libfido2").Run(); err != nil {
		t.Skip("libfido2 (libfido2-dev) not installed")
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("INTEROP_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startDaemon starts a fresh authenticator (new simulator TPM, new state
// directory) and returns it; everything stops when the test ends.
func startDaemon(t *testing.T) *daemon {
	t.Helper()
	requireLibfido2(t)
	sim, err := tpmsim.Open()
	if err != nil {
		t.Skipf("TPM simulator unavailable: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	// The reference simulator starts with 3 tries and 1000 s recovery: a
	// PIN test would hit TPM lockout, which a real TPM's larger budget
	// does not. Give it a realistic budget (lockout auth is empty).
	if err := daParameters(sim, 32, 10, 10); err != nil {
		t.Fatalf("TPM2_DictionaryAttackParameters: %v", err)
	}
	log := testLogger(t)
	store, err := tpmstore.Open(tpmstore.Config{TPM: sim, Dir: t.TempDir(), Logger: log})
	if err != nil {
		t.Fatalf("tpmstore.Open: %v", err)
	}
	t.Cleanup(func() { store.Close() })
	allow := presence.Fixed{Allow: true}
	a, err := ctap2.New(ctap2.Config{Store: store, Presence: allow, Logger: log})
	if err != nil {
		t.Fatalf("ctap2.New: %v", err)
	}
	u, err := u2f.New(u2f.Config{Store: store, Presence: allow, Logger: log})
	if err != nil {
		t.Fatalf("u2f.New: %v", err)
	}
	mux := &ctap.Mux{CBOR: a, MSG: u}

	dir, err := os.MkdirTemp("", "tpmfido-interop")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "ctaphid.sock")
	dev, err := transport.Open("unix:"+path, log)
	if err != nil {
		t.Fatalf("transport.Open: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- ctaphid.NewServer(dev, mux, ctaphid.Config{Logger: log}).Serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		dev.Close()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrClosed) {
			t.Logf("ctaphid server: %v", err)
		}
	})
	return &daemon{path: path, store: store}
}

// open connects libfido2 to d; the device is closed when the test ends.
func (d *daemon) open(t *testing.T) *Device {
	t.Helper()
	dev, err := Open(d.path)
	if err != nil {
		t.Fatalf("libfido2 open: %v", err)
	}
	t.Cleanup(dev.Close)
	return dev
}

// daParameters sends TPM2_DictionaryAttackParameters (TPM 2.0 Part 3
// §25.3) authorised by TPM_RH_LOCKOUT with an empty password.
func daParameters(tpm tpmtransport.TPM, maxTries, recoverySec, lockoutRecoverySec uint32) error {
	const (
		tagSessions   = 0x8002
		ccDAParams    = 0x0000013A
		rhLockout     = 0x4000000A
		rsPassword    = 0x40000009
		passwordAreaN = 4 + 2 + 1 + 2
	)
	be := binary.BigEndian
	cmd := be.AppendUint16(nil, tagSessions)
	cmd = be.AppendUint32(cmd, 0) // total size, set below
	cmd = be.AppendUint32(cmd, ccDAParams)
	cmd = be.AppendUint32(cmd, rhLockout)
	cmd = be.AppendUint32(cmd, passwordAreaN)
	cmd = be.AppendUint32(cmd, rsPassword)
	cmd = be.AppendUint16(cmd, 0) // nonceCaller
	cmd = append(cmd, 0)          // sessionAttributes
	cmd = be.AppendUint16(cmd, 0) // hmac (the empty password)
	for _, v := range []uint32{maxTries, recoverySec, lockoutRecoverySec} {
		cmd = be.AppendUint32(cmd, v)
	}
	be.PutUint32(cmd[2:6], uint32(len(cmd)))
	rsp, err := tpm.Send(cmd)
	if err != nil {
		return err
	}
	if len(rsp) < 10 {
		return fmt.Errorf("response of %d bytes", len(rsp))
	}
	if rc := be.Uint32(rsp[6:10]); rc != 0 {
		return fmt.Errorf("TPM response code %#x", rc)
	}
	return nil
}
